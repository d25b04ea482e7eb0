//! The shipped configuration files parse, validate and say exactly the
//! defaults, so they never rot.

use imcloud::{CloudFile, LogicFile, StandaloneFile, load};

fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config")
        .join(name)
}

#[test]
fn every_shipped_config_parses_to_the_defaults() {
    let cloud: CloudFile = load(Some(&path("cloud.toml"))).expect("cloud.toml");
    cloud.cloud.validate().expect("valid");
    assert_eq!(format!("{cloud:?}"), format!("{:?}", CloudFile::default()));

    let logic: LogicFile = load(Some(&path("logic.toml"))).expect("logic.toml");
    logic.logic.validate().expect("valid");
    assert_eq!(format!("{logic:?}"), format!("{:?}", LogicFile::default()));

    let standalone: StandaloneFile = load(Some(&path("standalone.toml"))).expect("standalone.toml");
    assert_eq!(
        format!("{standalone:?}"),
        format!("{:?}", StandaloneFile::default())
    );
}

#[test]
fn every_file_in_config_is_checked_here() {
    let mut names: Vec<String> = std::fs::read_dir(path(""))
        .expect("config dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["cloud.toml", "logic.toml", "standalone.toml"]);
}

#[test]
fn a_typo_in_a_config_file_is_an_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("imcloud-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[cloud]\nsend_queu = 8\n").expect("write");
    let err = load::<CloudFile>(Some(&file)).expect_err("typo");
    assert!(format!("{err:#}").contains("send_queu"), "{err:#}");
}
