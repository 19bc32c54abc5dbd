//! The TOML configuration file (`--config FILE` or `QD_CONFIG`), the third source of settings
//! after flags and the environment: flag > environment > file > default.
//!
//! The file holds the same settings as the flags, under the flags' names without the dashes'
//! prefix (`max-in-flight = 2048`, or `max_in_flight`), at the top level:
//!
//! ```toml
//! listen = "0.0.0.0:7700"
//! data = "/var/lib/qd"
//! durability = "fsync"
//! secret-file = "/run/secrets/qd"
//! ```
//!
//! How: before clap parses the command line, each setting of the file is put into the
//! environment variable of its flag (`QD_MAX_IN_FLIGHT`), unless that variable is already
//! set. Clap then applies its usual order (a flag beats its variable), which gives exactly the
//! precedence above with no second copy of any default or validation rule: a value from the
//! file is checked by the same parser as the flag, and its error names the variable. A key
//! that is no flag of `qd`, or a flag without a variable, is refused with the list of keys.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The flag that names the file, and its variable.
pub const FLAG: &str = "--config";
pub const ENV: &str = "QD_CONFIG";

/// Reads the file named by `--config` in `args` or by `QD_CONFIG`, if any, and sets the
/// environment variables of its settings that are not already set.
pub fn apply(cmd: &clap::Command, args: &[OsString]) -> anyhow::Result<()> {
    let Some(path) = config_path(args) else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the config file {}; check the path given to --config or QD_CONFIG",
            path.display()
        )
    })?;
    for (env, value) in settings(cmd, &path, &text)? {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(&env, value);
        }
    }
    Ok(())
}

/// `--config FILE`, `--config=FILE`, or `QD_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else { continue };
        if s == FLAG {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The environment variable and value for each setting of the file, checked against the
/// flags of `cmd` and all its subcommands.
fn settings(cmd: &clap::Command, path: &Path, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("the config file {} is not valid TOML", path.display()))?;
    let flags = flag_envs(cmd);
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let name = key.replace('_', "-");
        let Some(env) = flags.get(&name) else {
            let known: Vec<&str> = flags.keys().map(String::as_str).collect();
            bail!(
                "unknown setting {key:?} in the config file {}; the settings are: {}",
                path.display(),
                known.join(", ")
            );
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "setting {key:?} in the config file {} is a {}; give a string, number or boolean",
                path.display(),
                other.type_str()
            ),
        };
        out.push((env.clone(), value));
    }
    Ok(out)
}

/// Long flag name -> environment variable, for every flag that has one (the config flag
/// itself excluded: a file cannot name another file).
fn flag_envs(cmd: &clap::Command) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        for arg in c.get_arguments() {
            if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
                if env != ENV {
                    map.insert(long.to_string(), env.to_string_lossy().into_owned());
                }
            }
        }
        stack.extend(c.get_subcommands());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    // Precedence through the real parser is tested end to end (tests/e2e/cli.rs): setting
    // variables here would leak into the other tests of this process.

    fn cmd() -> clap::Command {
        crate::cli::Cli::command()
    }

    #[test]
    fn settings_map_to_the_flags_variables() {
        let text = "listen = \"0.0.0.0:7700\"\nmax_in_flight = 2048\ndurability = \"interval\"\n";
        let mut got = settings(&cmd(), Path::new("qd.toml"), text).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("QD_DURABILITY".to_string(), "interval".to_string()),
                ("QD_LISTEN".to_string(), "0.0.0.0:7700".to_string()),
                ("QD_MAX_IN_FLIGHT".to_string(), "2048".to_string()),
            ]
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_the_list() {
        let err = settings(&cmd(), Path::new("qd.toml"), "lisen = \"x\"").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("unknown setting \"lisen\""), "{msg}");
        assert!(msg.contains("listen"), "{msg}");
    }

    #[test]
    fn bad_toml_and_tables_are_refused() {
        assert!(settings(&cmd(), Path::new("qd.toml"), "listen = ").is_err());
        assert!(settings(&cmd(), Path::new("qd.toml"), "[serve]\nlisten = \"x\"").is_err());
    }

    #[test]
    fn the_path_comes_from_the_flag_in_either_form() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["qd", "serve", "--config", "a.toml"])),
            Some("a.toml".into())
        );
        assert_eq!(config_path(&args(&["qd", "--config=b.toml", "serve"])), Some("b.toml".into()));
    }
}
