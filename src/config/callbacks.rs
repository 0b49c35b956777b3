//! `[postgresql.callbacks]` and `postgresql.pre_promote`: operator commands run on
//! PostgreSQL events, as Patroni's `postgresql.callbacks`.

use serde::Deserialize;

/// A command line, split as a POSIX shell would (quotes, backslashes; no expansion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// As written, for messages.
    pub text: String,
    /// Program and its arguments; never empty.
    pub argv: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error(
        "postgresql.{key} = {text:?} is not a command line (an unclosed quote, or empty); \
         write it as in a shell, e.g. \"/usr/local/bin/vip.sh --dev eth0\""
    )]
    NotACommand { key: String, text: String },
    #[error("postgresql.callback_timeout_ms must be at least 100 (it is {0})")]
    TimeoutTooShort(u64),
}

impl CommandLine {
    pub fn parse(key: &str, text: &str) -> Result<Self, CallbackError> {
        match shlex::split(text) {
            Some(argv) if !argv.is_empty() && !argv[0].is_empty() => Ok(Self {
                text: text.to_string(),
                argv,
            }),
            _ => Err(CallbackError::NotACommand {
                key: key.to_string(),
                text: text.to_string(),
            }),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallbacks {
    on_start: Option<String>,
    on_stop: Option<String>,
    on_restart: Option<String>,
    on_reload: Option<String>,
    on_role_change: Option<String>,
}

/// The commands, each run as `CMD ACTION ROLE CLUSTER` (Patroni's arguments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callbacks {
    pub on_start: Option<CommandLine>,
    pub on_stop: Option<CommandLine>,
    pub on_restart: Option<CommandLine>,
    pub on_reload: Option<CommandLine>,
    pub on_role_change: Option<CommandLine>,
    /// Run (and waited for) before a promotion; a non-zero exit or a timeout
    /// vetoes it.
    pub pre_promote: Option<CommandLine>,
    /// Longest a callback or `pre_promote` may run before it is killed.
    pub timeout_ms: u64,
}

pub const DEFAULT_CALLBACK_TIMEOUT_MS: u64 = 30_000;

impl Default for Callbacks {
    fn default() -> Self {
        Self {
            on_start: None,
            on_stop: None,
            on_restart: None,
            on_reload: None,
            on_role_change: None,
            pre_promote: None,
            timeout_ms: DEFAULT_CALLBACK_TIMEOUT_MS,
        }
    }
}

pub(super) fn callbacks(
    raw: RawCallbacks,
    pre_promote: Option<String>,
    timeout_ms: u64,
) -> Result<Callbacks, CallbackError> {
    if timeout_ms < 100 {
        return Err(CallbackError::TimeoutTooShort(timeout_ms));
    }
    let parse = |key: &str, v: Option<String>| -> Result<Option<CommandLine>, CallbackError> {
        v.map(|t| CommandLine::parse(key, &t)).transpose()
    };
    Ok(Callbacks {
        on_start: parse("callbacks.on_start", raw.on_start)?,
        on_stop: parse("callbacks.on_stop", raw.on_stop)?,
        on_restart: parse("callbacks.on_restart", raw.on_restart)?,
        on_reload: parse("callbacks.on_reload", raw.on_reload)?,
        on_role_change: parse("callbacks.on_role_change", raw.on_role_change)?,
        pre_promote: parse("pre_promote", pre_promote)?,
        timeout_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_as_a_shell_and_refuses_what_is_no_command() {
        let c = CommandLine::parse("callbacks.on_start", "/bin/vip.sh 'a b' --x").unwrap();
        assert_eq!(c.argv, ["/bin/vip.sh", "a b", "--x"]);
        for bad in ["", "   ", "'unclosed", "''"] {
            let e = CommandLine::parse("callbacks.on_stop", bad).unwrap_err();
            assert!(
                e.to_string().contains("postgresql.callbacks.on_stop"),
                "{e}"
            );
        }
        assert_eq!(
            callbacks(RawCallbacks::default(), None, 50).unwrap_err(),
            CallbackError::TimeoutTooShort(50)
        );
    }
}
