//! `drl-server`: a `drl` node — its configuration and, next, its HTTP API.
//!
//! - [`config`]: the YAML config of DESIGN.md §4, validated once with line/column diagnostics.

pub mod config;

pub use config::{Config, ConfigError, Diagnostic, StoreConfig};
