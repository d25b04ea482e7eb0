//! The shipped configuration files parse and validate, so they never rot.

use imcloud_cloud::CloudConfig;

#[test]
fn config_cloud_toml_is_the_defaults_written_out() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/cloud.toml");
    let text = std::fs::read_to_string(path).expect("config/cloud.toml");
    let parsed: CloudConfig = toml::from_str(&text).expect("parses");
    parsed.validate().expect("valid");
    // Every documented value is the real default: the file cannot drift.
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", CloudConfig::default())
    );
}
