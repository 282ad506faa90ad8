#![no_main]
// The body is ambit_dataplane_fuzz::control_decode (src/lib.rs), shared with the regression tests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_dataplane_fuzz::control_decode(data));
