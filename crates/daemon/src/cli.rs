//! Command-line plumbing both daemons share: which flags were given explicitly, as opposed to
//! defaulted (Flower refuses some combinations only when both flags were typed).

use std::collections::BTreeSet;
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

/// Parsed flags plus the long names (without `--`) of those given on the command line.
#[derive(Debug)]
pub struct Parsed<A> {
    /// The values.
    pub args: A,
    /// Flags given explicitly.
    pub explicit: BTreeSet<String>,
}

impl<A: CommandFactory + FromArgMatches> Parsed<A> {
    /// Parses a command line (the first item is the program name). Usage errors, and `--help`,
    /// come back as `clap::Error`, whose `exit()` prints and exits like argparse (status 2 for
    /// usage errors).
    pub fn parse_from<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = A::command().try_get_matches_from(argv)?;
        let args = A::from_arg_matches(&matches)?;
        let explicit = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.as_str().replace('_', "-"))
            .collect();
        Ok(Self { args, explicit })
    }
}

impl<A> Parsed<A> {
    /// True when `--name` was given on the command line.
    pub fn given(&self, name: &str) -> bool {
        self.explicit.contains(name)
    }
}

/// The `--version` line of a daemon.
pub fn version_line(daemon: &str, crate_version: &str) -> String {
    format!(
        "Flower version: {} ({daemon} {crate_version} from flower-rs)",
        crate::FLOWER_VERSION
    )
}
