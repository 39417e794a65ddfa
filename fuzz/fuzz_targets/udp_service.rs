#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xtcp_proto::fuzzing::udp_service(data));
