//! Every config shipped in `examples/` loads, so the files users copy from stay valid.

use std::path::Path;

use drl_server::Config;

#[test]
fn shipped_example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = Config::load(&path) {
                panic!("{} is invalid:\n{e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no example configs found in {}", dir.display());
}

/// The YAML examples in `docs/configuration.md` are configs that load (each on its own).
#[test]
fn the_configuration_docs_examples_are_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let text = std::fs::read_to_string(&path).expect("docs/configuration.md exists");
    let mut checked = 0;
    for block in text.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap_or_default();
        if let Err(e) = Config::from_yaml("docs/configuration.md", yaml) {
            panic!("an example of docs/configuration.md is invalid:\n{e}\n{yaml}");
        }
        checked += 1;
    }
    assert!(checked >= 2, "found {checked} YAML examples");
}
