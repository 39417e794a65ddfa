#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xtcp_proto::fuzzing::punch_probe(data));
