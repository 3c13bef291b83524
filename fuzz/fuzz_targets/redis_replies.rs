#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| codereview::fuzz_targets::redis_replies(data));
