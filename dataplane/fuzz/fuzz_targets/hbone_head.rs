#![no_main]
// The body is ambit_dataplane_fuzz::hbone_head (src/lib.rs), shared with the regression tests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_dataplane_fuzz::hbone_head(data));
