//! What the command line tells people beyond `--help`: the man pages (`dkimpress man DIR`) and
//! the values that help and shell completions offer for enumerated options.
//!
//! Owns: the pages, generated from the clap definitions with hand-written sections appended
//! (the opendkim.conf keys dkimpress reads with the defaults it uses, signals, files, exit
//! status, examples), the hand-written page of the sendmail wrapper (which is parsed before
//! clap), and [`Choices`]. It does not own what it describes: `conf.rs` reads opendkim.conf,
//! the commands decide defaults, [`super::exit_code`] the exit codes.
//!
//! Here: putting a page together (the generated sections, then the hand-written ones, then
//! VERSION), the roff escaping helpers, SEE ALSO, and [`Choices`] with its tables. The
//! opendkim.conf key tables and the section made of them are in `conf_keys`; the long
//! hand-written texts, the EXIT STATUS lists and the sendmail page in `sections`.

mod conf_keys;
mod sections;

use clap::builder::{PossibleValue, TypedValueParser};
use conf_keys::conf_keys_section;
use sections::{
    exit_codes, exit_status_section, sendmail_page, MILTER_CONFIGURATION, MILTER_EXAMPLES, MILTER_SIGNALS_FILES,
};
use std::ffi::OsStr;

/// The man pages: `dkimpress.1` and one `dkimpress-COMMAND.1` per command, as (file name, roff).
pub(crate) fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let cmd = <super::Cli as clap::CommandFactory>::command();
    let mut pages = vec![("dkimpress.1".to_string(), render(cmd.clone(), "dkimpress")?)];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("dkimpress-{}", sub.get_name());
        let page = if sub.get_name() == "sendmail" {
            // Parsed before clap (its arguments are sendmail's): a page of its own.
            sendmail_page(env!("CARGO_PKG_VERSION")).into_bytes()
        } else {
            // clap names are &'static without its `string` feature; a few bytes, once.
            let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
            let bin = format!("dkimpress {}", sub.get_name());
            render(sub.clone().name(leaked).bin_name(bin).version(env!("CARGO_PKG_VERSION")), &name)?
        };
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// A generated page with its hand-written sections after the generated ones, before VERSION.
fn render(mut cmd: clap::Command, page: &str) -> std::io::Result<Vec<u8>> {
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = vec![];
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if cmd.get_after_help().is_some() || cmd.get_after_long_help().is_some() {
        man.render_extra_section(&mut out)?;
    }
    out.extend_from_slice(extra_sections(page).as_bytes());
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// The hand-written sections of `page`, in roff.
fn extra_sections(page: &str) -> String {
    // No hyphenation: paths, keys and options are copied from these sections.
    let mut s = String::from(".nh\n");
    if page == "dkimpress-milter" {
        s += &roff(MILTER_CONFIGURATION);
        s += &conf_keys_section();
        s += &roff(MILTER_SIGNALS_FILES);
    }
    if let Some(codes) = exit_codes(page) {
        s += &exit_status_section(page, codes);
    }
    if page == "dkimpress-milter" {
        s += &roff(MILTER_EXAMPLES);
    }
    s += &see_also(page);
    s
}

/// Hand-written roff, with every `-` made `\-` (a hyphen-minus that can be copied into a
/// shell, not a typographic hyphen). The texts here contain no roff escape that holds a `-`.
fn roff(text: &str) -> String {
    text.replace('-', "\\-")
}

/// Text for a roff text line: escaped, and never taken for a request.
fn text(s: &str) -> String {
    let s = roff(&s.replace('\\', "\\e"));
    if s.starts_with(['.', '\'']) {
        format!("\\&{s}")
    } else {
        s
    }
}

fn see_also(page: &str) -> String {
    let pages: &[&str] = match page {
        "dkimpress" => &["dkimpress-milter(1)", "dkimpress-sendmail(1)", "opendkim.conf(5)"],
        "dkimpress-milter" => &[
            "dkimpress(1)",
            "dkimpress-testkey(1)",
            "dkimpress-genkey(1)",
            "dkimpress-sendmail(1)",
            "opendkim(8)",
            "opendkim.conf(5)",
            "postconf(5)",
            "systemd.service(5)",
        ],
        "dkimpress-filter" => &["dkimpress(1)", "dkimpress-sendmail(1)", "dkimpress-milter(1)", "pipe(8)"],
        "dkimpress-sendmail" => &["dkimpress(1)", "dkimpress-filter(1)", "dkimpress-milter(1)", "sendmail(1)"],
        _ => &["dkimpress(1)", "dkimpress-milter(1)"],
    };
    format!(".SH \"SEE ALSO\"\n{}\n", pages.iter().map(|p| bold_ref(p)).collect::<Vec<_>>().join(",\n"))
}

/// `name(1)` as roff: the name in bold.
fn bold_ref(p: &str) -> String {
    let (name, section) = p.split_once('(').unwrap_or((p, ""));
    format!("\\fB{}\\fR({section}", roff(name))
}

/// A value parser for an option with a fixed set of values: it parses with the type's own
/// `FromStr` (the same strings accepted, aliases and case included, the same error message and
/// exit status as a plain `FromStr` option), and tells help and shell completions the values.
#[derive(Clone)]
pub(crate) struct Choices<T> {
    /// (value, what it means), in the order shown.
    values: &'static [(&'static str, &'static str)],
    parse: fn(&str) -> Result<T, String>,
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Choices<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        self.parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.values.iter().map(|(v, help)| PossibleValue::new(*v).help(*help))))
    }
}

/// `--format` of sign and verify.
pub(crate) const INPUT_KINDS: Choices<dkimpress::pipeline::InputKind> = Choices {
    values: &[
        ("mbox", "an mbox file"),
        ("maildir", "a maildir (cur/, new/)"),
        ("queue", "a directory of files of one message each"),
        ("message", "one message"),
    ],
    parse: <dkimpress::pipeline::InputKind as std::str::FromStr>::from_str,
};

/// `--mbox-format` of sign and verify.
pub(crate) const MBOX_FORMATS: Choices<dkimpress::pipeline::mbox::MboxFormat> = Choices {
    values: &[
        ("mboxrd", "From_ quoting undone exactly"),
        ("mboxo", "From_ quoting, one > removed"),
        ("mboxcl", "mboxo quoting and Content-Length"),
        ("mboxcl2", "Content-Length, no quoting"),
    ],
    parse: <dkimpress::pipeline::mbox::MboxFormat as std::str::FromStr>::from_str,
};

/// `--framing` of sign and verify.
pub(crate) const FRAMINGS: Choices<dkimpress::pipeline::Framing> = Choices {
    values: &[("parallel", "each worker frames its own byte range"), ("serial", "one thread frames")],
    parse: <dkimpress::pipeline::Framing as std::str::FromStr>::from_str,
};

/// `--on-error` of filter.
pub(crate) const ON_ERROR: Choices<super::mta::OnError> = Choices {
    values: &[
        ("tempfail", "exit 75: Postfix keeps the message and retries"),
        ("pass", "re-inject it unsigned and log"),
    ],
    parse: <super::mta::OnError as std::str::FromStr>::from_str,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_what_they_offer() {
        fn check<T: Clone + Send + Sync + 'static>(c: &Choices<T>) {
            let cmd = clap::Command::new("t");
            for (v, _) in c.values {
                assert!(c.parse_ref(&cmd, None, OsStr::new(v)).is_ok(), "{v}");
            }
            assert!(c.parse_ref(&cmd, None, OsStr::new("nonsense")).is_err());
        }
        check(&INPUT_KINDS);
        check(&MBOX_FORMATS);
        check(&FRAMINGS);
        check(&ON_ERROR);
    }

    #[test]
    fn text_lines_are_never_requests() {
        for (input, want) in
            [("a-b", "a\\-b"), (".hidden", "\\&.hidden"), ("'quote", "\\&'quote"), ("back\\slash", "back\\eslash")]
        {
            assert_eq!(text(input), want);
        }
    }
}
