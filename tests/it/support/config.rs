//! `mirror.yaml` texts for tests that need a valid file: targets, default
//! targets, optional `registries:` YAML, and images. (Tests of bad files
//! write their text by hand, so that its lines and columns are the test's.)

use std::path::Path;

/// A `mirror.yaml` being built.
#[derive(Default)]
pub struct MirrorYaml {
    targets: Vec<(String, String)>,
    registries: String,
    referrers: Option<bool>,
    images: String,
}

impl MirrorYaml {
    pub fn new() -> MirrorYaml {
        MirrorYaml::default()
    }

    /// A target `name` at `prefix` (`HOST/PATH`); every target is a default.
    pub fn target(mut self, name: &str, prefix: &str) -> MirrorYaml {
        self.targets.push((name.to_string(), prefix.to_string()));
        self
    }

    /// `registries:` entries, as YAML indented by two spaces.
    pub fn registries(mut self, yaml: &str) -> MirrorYaml {
        self.registries.push_str(yaml);
        self
    }

    /// `defaults.referrers`.
    pub fn referrers(mut self, on: bool) -> MirrorYaml {
        self.referrers = Some(on);
        self
    }

    /// An image `name` from `source` with `tags` as YAML (`[v1]`,
    /// `{ regex: '.*' }`).
    pub fn image(self, name: &str, source: &str, tags: &str) -> MirrorYaml {
        self.image_with(name, source, tags, "")
    }

    /// An image with more keys (`extra`: YAML lines indented by four spaces).
    pub fn image_with(mut self, name: &str, source: &str, tags: &str, extra: &str) -> MirrorYaml {
        self.images.push_str(&format!(
            "  - name: {name}\n    source: {source}\n    tags: {tags}\n{extra}"
        ));
        self
    }

    /// The text.
    pub fn build(&self) -> String {
        let mut text = String::from("version: 1\ntargets:\n");
        for (name, prefix) in &self.targets {
            text.push_str(&format!("  {name}: {prefix}\n"));
        }
        let names: Vec<&str> = self.targets.iter().map(|(n, _)| n.as_str()).collect();
        text.push_str(&format!("defaults:\n  targets: [{}]\n", names.join(", ")));
        if let Some(on) = self.referrers {
            text.push_str(&format!("  referrers: {on}\n"));
        }
        if !self.registries.is_empty() {
            text.push_str("registries:\n");
            text.push_str(&self.registries);
        }
        text.push_str("images:\n");
        text.push_str(&self.images);
        text
    }

    /// Writes the text to `dir/mirror.yaml` and returns it.
    pub fn write(&self, dir: &Path) -> String {
        let text = self.build();
        std::fs::write(dir.join("mirror.yaml"), &text).unwrap();
        text
    }
}
