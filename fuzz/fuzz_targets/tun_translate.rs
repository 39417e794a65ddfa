#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xtcp_lab::tun::fuzzing::tun_translate(data));
