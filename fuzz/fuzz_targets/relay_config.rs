#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xtcp::fuzzing::relay_config(data));
