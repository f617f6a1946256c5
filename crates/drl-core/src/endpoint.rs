//! Opt-in normalisation of endpoints (`normalize_endpoints:` in the config).
//!
//! By default an endpoint is compared byte for byte: `/big`, `/big/`, `/BIG`, `/big?x=1`,
//! `//big` and `/%62ig` are six endpoints, six counters, and only the first matches a `/big`
//! rule. That is the only choice that never merges two things the service behind tells apart
//! (some servers are case sensitive, some give `?` or `//` a meaning). A deployment that knows
//! its service treats them alike turns on what it needs; each step is applied in this order:
//!
//! 1. `strip_query`: everything from the first `?` or `#` goes;
//! 2. `decode_unreserved`: `%XX` escapes of unreserved characters (RFC 3986: letters, digits,
//!    `-`, `.`, `_`, `~`) become the character, the hex digits of every other escape are
//!    upper-cased (`%2f` → `%2F`), so one spelling remains;
//! 3. `merge_slashes`: runs of `/` become one;
//! 4. `trailing_slash`: a `/` at the end goes (not the root `/`);
//! 5. `lowercase`: ASCII letters are lower-cased.
//!
//! User ids are never normalised: they come from authentication and are compared as given.

use std::borrow::Cow;

/// Which normalisations apply to endpoints before they are compared and counted. All off by
/// default: byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointNormalization {
    pub strip_query: bool,
    pub decode_unreserved: bool,
    pub merge_slashes: bool,
    pub trailing_slash: bool,
    pub lowercase: bool,
}

impl EndpointNormalization {
    /// Whether nothing is normalised.
    #[inline]
    pub fn is_off(&self) -> bool {
        *self == Self::default()
    }

    /// `endpoint` normalised; borrowed when nothing changes.
    #[inline]
    pub fn apply<'a>(&self, endpoint: &'a str) -> Cow<'a, str> {
        if self.is_off() {
            return Cow::Borrowed(endpoint);
        }
        self.normalize(endpoint)
    }

    fn normalize<'a>(&self, endpoint: &'a str) -> Cow<'a, str> {
        let mut path = endpoint;
        if self.strip_query
            && let Some(at) = path.find(['?', '#'])
        {
            path = &path[..at];
        }
        let bytes = path.as_bytes();
        let changes = (self.decode_unreserved && bytes.contains(&b'%'))
            || (self.merge_slashes && path.contains("//"))
            || (self.trailing_slash && path.len() > 1 && path.ends_with('/'))
            || (self.lowercase && bytes.iter().any(u8::is_ascii_uppercase));
        if !changes {
            return Cow::Borrowed(path);
        }
        let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if self.decode_unreserved
                && b == b'%'
                && let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2))
                && let (Some(h), Some(l)) = (hex(hi), hex(lo))
            {
                let decoded = h << 4 | l;
                if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
                    out.push(decoded);
                } else {
                    out.extend([b'%', hi.to_ascii_uppercase(), lo.to_ascii_uppercase()]);
                }
                i += 3;
                continue;
            }
            if !(self.merge_slashes && b == b'/' && out.last() == Some(&b'/')) {
                out.push(b);
            }
            i += 1;
        }
        if self.trailing_slash {
            while out.len() > 1 && out.last() == Some(&b'/') {
                out.pop();
            }
        }
        if self.lowercase {
            out.make_ascii_lowercase();
        }
        // Only ASCII bytes were replaced by ASCII bytes: still UTF-8.
        Cow::Owned(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The value of one hex digit.
fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_and_all_together() {
        let all = EndpointNormalization {
            strip_query: true,
            decode_unreserved: true,
            merge_slashes: true,
            trailing_slash: true,
            lowercase: true,
        };
        for variant in [
            "/big",
            "/big/",
            "/BIG",
            "/big?x=1",
            "//big",
            "/%62ig",
            "/b%49g#top",
        ] {
            assert_eq!(all.apply(variant), "/big", "{variant}");
        }
        assert_eq!(all.apply("/"), "/");
        assert_eq!(all.apply("/a%2fb"), "/a%2fb", "an escaped / stays escaped");
        assert_eq!(all.apply("/ünï/"), "/ünï");
        let off = EndpointNormalization::default();
        assert!(matches!(off.apply("/BIG?x"), Cow::Borrowed("/BIG?x")));
        let query = EndpointNormalization {
            strip_query: true,
            ..off
        };
        assert_eq!(query.apply("/Big//x/?q"), "/Big//x/");
        let decode = EndpointNormalization {
            decode_unreserved: true,
            ..off
        };
        assert_eq!(decode.apply("/%7e%2f%zz%4"), "/~%2F%zz%4");
    }
}
