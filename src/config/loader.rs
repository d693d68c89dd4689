//! Building a [`Config`] from layers: built-in defaults, a YAML file, the environment and
//! command-line flags ([`FlagOverrides`]), merged key by key while remembering the
//! [`Origin`] of each key, so an error names the key and where its value came from.

use super::{Config, ConfigError, Origin, CONFIG_PATH_ENV, ENV_ALIASES, ENV_PREFIX};
use crate::secret::Secret;
use serde::Serialize;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Keys whose value is a free-form map rather than a fixed set of keys.
const FREE_FORM_KEYS: &[&str] = &["kafka.properties"];

/// Values set by command-line flags, keyed by their dotted config key.
#[derive(Debug, Default, Clone)]
pub struct FlagOverrides {
    values: Vec<(String, String, FlagValue)>,
}

#[derive(Debug, Clone)]
enum FlagValue {
    Typed(Value),
    /// As typed on the command line: read like an environment variable's value (by the type
    /// of the key's default).
    Raw(String),
}

impl FlagOverrides {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` from flag `--flag` when the flag was given.
    pub fn set<T: Serialize>(&mut self, key: &str, flag: &str, value: Option<T>) -> &mut Self {
        if let Some(value) = value {
            let value = serde_yaml::to_value(value).unwrap_or(Value::Null);
            self.values
                .push((key.to_string(), flag.to_string(), FlagValue::Typed(value)));
        }
        self
    }

    /// Sets `key` from flag `--flag` as typed (`true` for a switch).
    pub fn set_raw(&mut self, key: &str, flag: &str, raw: &str) -> &mut Self {
        self.values.push((
            key.to_string(),
            flag.to_string(),
            FlagValue::Raw(raw.to_string()),
        ));
        self
    }

    /// Adds `other`'s values after this one's (they win).
    pub fn extend(&mut self, other: FlagOverrides) -> &mut Self {
        self.values.extend(other.values);
        self
    }

    /// Whether a flag set `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.values.iter().any(|(k, _, _)| k == key)
    }
}

/// Builds a [`Config`] from layers applied in call order; later layers win.
pub struct ConfigLoader {
    defaults: Value,
    merged: Value,
    origins: HashMap<String, Origin>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    pub fn new() -> Self {
        let defaults = serde_yaml::to_value(Config::default()).unwrap_or(Value::Null);
        Self {
            merged: defaults.clone(),
            defaults,
            origins: HashMap::new(),
        }
    }

    /// Every settable key with its environment variable name, in file order.
    pub fn env_names(&self) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        collect_leaf_keys(&self.defaults, "", &mut keys);
        keys.into_iter()
            .filter(|key| !is_free_form(key))
            .map(|key| {
                let env = env_name(&key);
                (key, env)
            })
            .collect()
    }

    pub fn file(&mut self, path: &Path) -> Result<&mut Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.yaml(&text, Origin::File(path.to_path_buf()))
    }

    /// Applies YAML text (the contents of a config file) as one layer.
    pub fn yaml(&mut self, text: &str, origin: Origin) -> Result<&mut Self, ConfigError> {
        let syntax_error = |reason: String| match &origin {
            Origin::File(path) => ConfigError::Syntax {
                path: path.clone(),
                reason,
            },
            other => ConfigError::InvalidValue {
                origin: other.clone(),
                key: String::new(),
                reason,
            },
        };
        let layer: Value =
            serde_yaml::from_str(text).map_err(|error| syntax_error(error.to_string()))?;
        match layer {
            Value::Null => Ok(self),
            Value::Mapping(map) => {
                self.merge_mapping(map, "", &origin)?;
                Ok(self)
            }
            _ => Err(syntax_error(
                "the top level must be a mapping of sections".into(),
            )),
        }
    }

    /// Applies environment variables (pass `std::env::vars()`).
    pub fn env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<&mut Self, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let known = self.env_names();
        for name in vars.keys() {
            let is_ours = name.starts_with(ENV_PREFIX) && name != CONFIG_PATH_ENV;
            if is_ours && !known.iter().any(|(_, env)| env == name) {
                return Err(ConfigError::UnknownKey {
                    origin: Origin::Env(name.clone()),
                    key: name[ENV_PREFIX.len()..].to_ascii_lowercase(),
                });
            }
        }
        // Aliases first so that the SECKILL_ spelling wins when both are set.
        let aliases = ENV_ALIASES.iter().map(|(env, key)| (*env, key.to_string()));
        let prefixed = known.iter().map(|(key, env)| (env.as_str(), key.clone()));
        for (env, key) in aliases.chain(prefixed) {
            if let Some(raw) = vars.get(env) {
                let value = self.env_value(&key, raw);
                self.set_leaf(&key, value, Origin::Env(env.to_string()))?;
            }
        }
        Ok(self)
    }

    /// Applies command-line flags.
    pub fn flags(&mut self, flags: &FlagOverrides) -> Result<&mut Self, ConfigError> {
        for (key, flag, value) in &flags.values {
            let value = match value {
                FlagValue::Typed(value) => value.clone(),
                FlagValue::Raw(raw) => self.env_value(key, raw),
            };
            self.set_leaf(key, value, Origin::Flag(flag.clone()))?;
        }
        Ok(self)
    }

    /// Deserializes and validates the merged layers.
    pub fn build(&self) -> Result<Config, ConfigError> {
        let mut tree = self.merged.clone();
        let config: Config = loop {
            match serde_path_to_error::deserialize(tree.clone()) {
                Ok(config) => break config,
                Err(error) => {
                    let key = error.path().to_string();
                    // Text from the environment for an optional number (`seed: null` by
                    // default) is kept as text first; read it as a number before failing.
                    if matches!(
                        self.origins.get(&key),
                        Some(Origin::Env(_) | Origin::Flag(_))
                    ) {
                        if let Some(slot) = lookup_mut(&mut tree, &key) {
                            if let Value::String(raw) = slot {
                                if let Ok(scalar @ (Value::Number(_) | Value::Bool(_))) =
                                    serde_yaml::from_str::<Value>(raw)
                                {
                                    *slot = scalar;
                                    continue;
                                }
                            }
                        }
                    }
                    return Err(ConfigError::InvalidValue {
                        origin: self.origin_of(&key),
                        key,
                        reason: error.into_inner().to_string(),
                    });
                }
            }
        };
        config.validate(|key| self.origin_of(key))?;
        let mut config = config;
        self.read_password_files(&mut config)?;
        Ok(config)
    }

    /// Passwords come from the environment or from a file, never from the config file:
    /// config files get committed, copied and printed.
    fn read_password_files(&self, config: &mut Config) -> Result<(), ConfigError> {
        let kafka = &mut config.kafka;
        for (key, password, file) in [
            (
                "kafka.sasl_password",
                &mut kafka.sasl_password,
                &kafka.sasl_password_file,
            ),
            (
                "kafka.ssl_key_password",
                &mut kafka.ssl_key_password,
                &kafka.ssl_key_password_file,
            ),
        ] {
            let file_key = format!("{key}_file");
            let invalid = |key: &str, reason: String| ConfigError::InvalidValue {
                origin: self.origin_of(key),
                key: key.to_string(),
                reason,
            };
            if password.is_some() && matches!(self.origin_of(key), Origin::File(_)) {
                return Err(invalid(
                    key,
                    format!(
                        "a password may not be written in a config file: set {} or `{file_key}`",
                        env_name(key)
                    ),
                ));
            }
            let Some(path) = file else { continue };
            if password.is_some() {
                return Err(invalid(
                    &file_key,
                    format!("set either `{key}` or `{file_key}`, not both"),
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|error| invalid(&file_key, format!("cannot read {path}: {error}")))?;
            let secret = text.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(invalid(&file_key, format!("{path} is empty")));
            }
            *password = Some(Secret::new(secret.to_string()));
        }
        Ok(())
    }

    /// The layer that set `key`, or the nearest enclosing key that a layer set.
    fn origin_of(&self, key: &str) -> Origin {
        // `a.list[2]` was set with `a.list`.
        let mut candidate = key.split('[').next().unwrap_or(key);
        loop {
            if let Some(origin) = self.origins.get(candidate) {
                return origin.clone();
            }
            match candidate.rsplit_once('.') {
                Some((parent, _)) => candidate = parent,
                None => return Origin::Default,
            }
        }
    }

    /// Environment values are text; keys whose default is not text are parsed as YAML
    /// scalars (`4`, `true`), and a value that does not parse stays text so that the type
    /// error names the key.
    fn env_value(&self, key: &str, raw: &str) -> Value {
        match lookup(&self.defaults, key) {
            Some(Value::String(_)) | Some(Value::Null) | None => Value::String(raw.to_string()),
            // Lists are comma-separated (`101,102`, `redis://a:1,redis://b:2`); numbers stay
            // numbers.
            Some(Value::Sequence(_)) => Value::Sequence(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| match serde_yaml::from_str::<Value>(item) {
                        Ok(number @ Value::Number(_)) => number,
                        _ => Value::String(item.to_string()),
                    })
                    .collect(),
            ),
            Some(_) => match serde_yaml::from_str::<Value>(raw) {
                Ok(scalar @ (Value::Bool(_) | Value::Number(_))) => scalar,
                _ => Value::String(raw.to_string()),
            },
        }
    }

    fn merge_mapping(
        &mut self,
        layer: Mapping,
        prefix: &str,
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        for (raw_key, value) in layer {
            let name = match raw_key {
                Value::String(name) => name,
                other => {
                    let shown = serde_yaml::to_string(&other).unwrap_or_default();
                    return Err(ConfigError::InvalidValue {
                        origin: origin.clone(),
                        key: format!("{prefix}{}", shown.trim()),
                        reason: "keys must be strings".into(),
                    });
                }
            };
            let key = format!("{prefix}{name}");
            let default = lookup(&self.defaults, &key);
            match (default, value) {
                (None, _) if !is_free_form_child(&key) => {
                    return Err(ConfigError::UnknownKey {
                        origin: origin.clone(),
                        key,
                    });
                }
                // An empty section (`server_kafka:` with everything commented out) is a no-op.
                (Some(Value::Mapping(_)), Value::Null) if !is_free_form(&key) => {}
                (Some(Value::Mapping(_)), Value::Mapping(children)) if !is_free_form(&key) => {
                    self.merge_mapping(children, &format!("{key}."), origin)?;
                }
                (_, value) => self.set_leaf(&key, value, origin.clone())?,
            }
        }
        Ok(())
    }

    fn set_leaf(&mut self, key: &str, value: Value, origin: Origin) -> Result<(), ConfigError> {
        if lookup(&self.defaults, key).is_none() && !is_free_form_child(key) {
            return Err(ConfigError::UnknownKey {
                origin,
                key: key.to_string(),
            });
        }
        let mut node = &mut self.merged;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let map = match node {
                Value::Mapping(map) => map,
                other => {
                    *other = Value::Mapping(Mapping::new());
                    match other {
                        Value::Mapping(map) => map,
                        _ => unreachable!("just assigned a mapping"),
                    }
                }
            };
            let part_key = Value::String(part.to_string());
            if parts.peek().is_none() {
                map.insert(part_key, value);
                break;
            }
            node = map
                .entry(part_key)
                .or_insert(Value::Mapping(Mapping::new()));
        }
        self.origins.insert(key.to_string(), origin);
        Ok(())
    }
}

fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.')
        .try_fold(tree, |node, part| node.as_mapping()?.get(part))
}

fn lookup_mut<'a>(tree: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    key.split('.')
        .try_fold(tree, |node, part| node.as_mapping_mut()?.get_mut(part))
}

fn is_free_form(key: &str) -> bool {
    FREE_FORM_KEYS.contains(&key)
}

/// Whether `key` lies inside a free-form map such as `kafka.properties.linger.ms`.
fn is_free_form_child(key: &str) -> bool {
    FREE_FORM_KEYS.iter().any(|free| {
        key.len() > free.len() && key.starts_with(free) && key[free.len()..].starts_with('.')
    })
}

fn collect_leaf_keys(node: &Value, prefix: &str, out: &mut Vec<String>) {
    match node {
        Value::Mapping(map) if !is_free_form(prefix.trim_end_matches('.')) || prefix.is_empty() => {
            for (key, child) in map {
                if let Some(key) = key.as_str() {
                    collect_leaf_keys(child, &format!("{prefix}{key}."), out);
                }
            }
        }
        _ => out.push(prefix.trim_end_matches('.').to_string()),
    }
}

/// `server_kafka.consumers` -> `SECKILL_SERVER_KAFKA_CONSUMERS`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}
