//! Span-aware loading: the file checked on its own with `toml_edit` (which keeps spans),
//! then layered with the environment by the `config` crate; every problem located as
//! `FILE:LINE:COL` or `env VAR` (see the module doc of `config`).

use std::collections::BTreeSet;
use std::path::Path;

use super::{ConfigErrors, GatewayConfig, Problem, ENV_LIST_KEYS, ENV_PREFIX, ENV_SEPARATOR};

/// Environment overrides that apply, as `(VAR, dotted key, value)`.
pub(super) type EnvOverrides = Vec<(String, String, String)>;

impl GatewayConfig {
    /// Loads `path` with the environment overrides of this process.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
        let overrides = env_overrides(std::env::vars());
        Self::load_with_env(path, &overrides)
    }

    pub(super) fn load_with_env(
        path: &Path,
        overrides: &EnvOverrides,
    ) -> Result<GatewayConfig, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Problem {
                location: file.clone(),
                key: "-".into(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        let located = LocatedFile::parse(&file, &text)?;
        let (mut problems, mut from_file) = located.shape_problems();
        from_file.fill_derived_defaults();
        problems.extend(unknown_env_keys(overrides));
        if !problems.is_empty() {
            // Value rules too, on what the file says once the broken keys fall back to
            // their defaults, so one run reports everything.
            let reported: BTreeSet<String> = problems.iter().map(|p| p.key.clone()).collect();
            problems.extend(
                from_file
                    .validate()
                    .into_iter()
                    .filter(|(key, _)| {
                        !reported.contains(key) && located.offset_of(key, false).is_some()
                    })
                    .map(|(key, message)| Problem {
                        location: located.locate(&key, false),
                        key,
                        message,
                    }),
            );
            problems.sort_by_key(|p| located.offset_of(&p.key, false).unwrap_or(usize::MAX));
            return Err(ConfigErrors(problems));
        }

        let mut config = layer_with_config_crate(&file, &text, overrides)?;
        config.fill_derived_defaults();
        let problems: Vec<Problem> = config
            .validate()
            .into_iter()
            .map(|(key, message)| Problem {
                location: located.locate_override_aware(&key, overrides),
                key,
                message,
            })
            .collect();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

/// `IOTSPHERE__SECTION__KEY=value` pairs, as `(VAR, section.key, value)`.
pub(super) fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> EnvOverrides {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    vars.filter_map(|(name, value)| {
        let rest = name.strip_prefix(&prefix)?;
        let key = rest.split(ENV_SEPARATOR).collect::<Vec<_>>().join(".");
        Some((name, key.to_lowercase(), value))
    })
    .collect()
}

fn unknown_env_keys(overrides: &EnvOverrides) -> Vec<Problem> {
    let known = GatewayConfig::known_keys();
    overrides
        .iter()
        .filter(|(_, key, _)| !known.contains(key))
        .map(|(var, key, _)| Problem {
            location: format!("env {var}"),
            key: key.clone(),
            message: "unknown key".into(),
        })
        .collect()
}

/// Layers the file and the environment with the `config` crate and deserializes the result.
fn layer_with_config_crate(
    file: &str,
    text: &str,
    overrides: &EnvOverrides,
) -> Result<GatewayConfig, ConfigErrors> {
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .list_separator(",")
        .source(Some(
            overrides
                .iter()
                .map(|(var, _, value)| (var.clone(), value.clone()))
                .collect(),
        ));
    for key in ENV_LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .and_then(|layered| layered.try_deserialize::<GatewayConfig>())
        .map_err(|e| {
            let key = match &e {
                config::ConfigError::Type { key: Some(key), .. } => key.clone(),
                _ => "-".into(),
            };
            let location = overrides
                .iter()
                .find(|(_, k, _)| *k == key)
                .map(|(var, _, _)| format!("env {var}"))
                .unwrap_or_else(|| file.to_string());
            ConfigErrors(vec![Problem {
                location,
                key,
                message: e.to_string(),
            }])
        })
}

/// The file's text parsed twice: with spans (to point at problems) and as plain values.
struct LocatedFile<'a> {
    file: &'a str,
    text: &'a str,
    spans: toml_edit::ImDocument<&'a str>,
    values: toml::Table,
}

impl<'a> LocatedFile<'a> {
    fn parse(file: &'a str, text: &'a str) -> Result<Self, ConfigErrors> {
        let syntax_error = |message: String, offset: Option<usize>| {
            let location = offset
                .map(|o| format!("{file}:{}", line_col(text, o)))
                .unwrap_or_else(|| file.to_string());
            ConfigErrors(vec![Problem {
                location,
                key: "-".into(),
                message: format!("TOML syntax: {}", message.trim()),
            }])
        };
        let spans = toml_edit::ImDocument::parse(text)
            .map_err(|e| syntax_error(e.message().to_string(), e.span().map(|s| s.start)))?;
        let values = text
            .parse::<toml::Table>()
            .map_err(|e| syntax_error(e.message().to_string(), e.span().map(|s| s.start)))?;
        Ok(Self {
            file,
            text,
            spans,
            values,
        })
    }

    /// Unknown keys and wrong types, all of them, and the configuration the file gives
    /// once the keys with wrong types are left out (they fall back to their defaults).
    fn shape_problems(&self) -> (Vec<Problem>, GatewayConfig) {
        let mut problems = Vec::new();
        let mut values = self.values.clone();
        let mut repaired = GatewayConfig::default();
        // Each round removes the key that failed, so the loop ends; the bound is a safeguard.
        for _ in 0..256 {
            let mut unknown = Vec::new();
            let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
            let deserializer = serde_ignored::Deserializer::new(
                toml::Value::Table(values.clone()),
                &mut record_unknown,
            );
            let result: Result<GatewayConfig, _> = serde_path_to_error::deserialize(deserializer);
            match result {
                Ok(config) => {
                    repaired = config;
                    problems.extend(unknown.into_iter().map(|key| Problem {
                        location: self.locate(&key, true),
                        message: "unknown key".into(),
                        key,
                    }));
                    break;
                }
                Err(e) => {
                    let key = e.path().to_string();
                    problems.push(Problem {
                        location: self.locate(&key, false),
                        message: e.into_inner().message().to_string(),
                        key: key.clone(),
                    });
                    if !remove_path(&mut values, &key) {
                        break;
                    }
                }
            }
        }
        (problems, repaired)
    }

    fn locate_override_aware(&self, key: &str, overrides: &EnvOverrides) -> String {
        match overrides.iter().find(|(_, k, _)| k == key) {
            Some((var, _, _)) => format!("env {var}"),
            None => self.locate(key, false),
        }
    }

    /// `FILE:LINE:COL` of a dotted key (its name when `at_key`, else its value); `FILE`
    /// alone when the key is not written in the file (a default was used).
    fn locate(&self, key: &str, at_key: bool) -> String {
        match self.offset_of(key, at_key) {
            Some(offset) => format!("{}:{}", self.file, line_col(self.text, offset)),
            None => self.file.to_string(),
        }
    }

    fn offset_of(&self, key: &str, at_key: bool) -> Option<usize> {
        let mut table: &dyn toml_edit::TableLike = self.spans.as_table();
        let mut segments = split_path(key).into_iter().peekable();
        let mut offset = None;
        while let Some(segment) = segments.next() {
            let (name, index) = segment;
            let (k, item) = table.get_key_value(name)?;
            offset = if at_key { k.span() } else { item.span() }
                .or_else(|| k.span())
                .map(|s| s.start);
            if let Some(i) = index {
                offset = item
                    .as_array()
                    .and_then(|a| a.get(i))
                    .and_then(|v| v.span())
                    .map(|s| s.start)
                    .or(offset);
            }
            if segments.peek().is_some() {
                table = item.as_table_like()?;
            }
        }
        offset
    }
}

/// `bridge.forward[2]` → `[("bridge", None), ("forward", Some(2))]`.
fn split_path(key: &str) -> Vec<(&str, Option<usize>)> {
    key.split('.')
        .filter(|s| !s.is_empty() && *s != "?")
        .map(|segment| match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
            None => (segment, None),
        })
        .collect()
}

/// Removes the key a dotted path names (a whole array for an element path).
fn remove_path(table: &mut toml::Table, key: &str) -> bool {
    let segments = split_path(key);
    let Some(((last, _), parents)) = segments.split_last() else {
        return false;
    };
    let mut current = table;
    for (name, _) in parents {
        match current.get_mut(*name) {
            Some(toml::Value::Table(inner)) => current = inner,
            _ => return false,
        }
    }
    current.remove(*last).is_some()
}

/// 1-based `LINE:COL` of a byte offset.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    format!("{line}:{col}")
}
