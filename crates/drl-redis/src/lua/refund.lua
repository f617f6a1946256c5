-- Takes admissions back (all-or-nothing checks across slots, when a later slot denied).
-- 4 args per key, in KEYS order: the algorithm's letter, hits, the refund token, and unused.
-- See `take_back`.
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  take_back(key, ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3])
end
return #KEYS
