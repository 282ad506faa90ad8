#![no_main]
// The body is ambit_dataplane_fuzz::socks5 (src/lib.rs), shared with the regression tests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_dataplane_fuzz::socks5(data));
