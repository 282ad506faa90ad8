//! The route regular expressions the controller accepts are the ones this
//! crate's engine compiles: the shared vectors (test/shared/resources/
//! regex-vectors.json), which the TypeScript validator is tested against too.

use std::path::Path;

fn vectors() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/shared/resources/regex-vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("regex-vectors.json is JSON")
}

fn list(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key].as_array().expect(key).iter().map(|x| x.as_str().expect("a string").to_string()).collect()
}

#[test]
fn accepted_vectors_compile() {
    let v = vectors();
    for re in list(&v, "accepted") {
        assert!(regex::Regex::new(&re).is_ok(), "{re:?} should compile: {:?}", regex::Regex::new(&re).err());
    }
}

#[test]
fn refused_vectors_do_not_compile() {
    let v = vectors();
    for re in list(&v, "refused") {
        assert!(regex::Regex::new(&re).is_err(), "{re:?} should be refused");
    }
}
