//! `dkimpress seal`: the next ARC set (RFC 8617 §5.1) on one message or whole archives, through
//! the same signing step as `sign` (keys chosen the same way, the same inputs, outputs and
//! failure policy), with the existing chain validated first.

use crate::cli::args::RecordArgs;
use crate::cli::error::usage;
use crate::cli::keys::key_lookup;
use crate::cli::sign::{cmd_sign, SignArgs, SignConfig};
use crate::cli::verify::check_authserv_id;
use clap::Args;
use dkimpress::dkim::verify::Policy;
use dkimpress::lookup::KeyCache;
use dkimpress::pipeline::ArcSealing;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct SealArgs {
    #[command(flatten)]
    pub(crate) sign: SignArgs,
    /// Where the keys of the existing chain (and with --verify, of DKIM) come from.
    #[command(flatten)]
    pub(crate) records: RecordArgs,
    /// Our authserv-id. The ARC-Authentication-Results carry the results of the
    /// Authentication-Results fields with this id already in the message, in their order.
    #[arg(long = "authserv-id", value_name = "ID", required = true)]
    pub(crate) authserv_id: String,
    /// Verify DKIM and the ARC chain here and seal those results (dkim=, arc=) instead of the
    /// message's own Authentication-Results.
    #[arg(long = "verify")]
    pub(crate) verify: bool,
    /// Smallest RSA key accepted in the existing chain, in bits (RFC 8301: 1024).
    #[arg(long = "min-key-bits", value_name = "BITS", default_value_t = 1024)]
    pub(crate) min_key_bits: usize,
}

pub(crate) fn cmd_seal(a: SealArgs) -> anyhow::Result<ExitCode> {
    check_authserv_id(&a.authserv_id)?;
    let k = &a.sign.k;
    for (given, flag) in [
        (k.identity.is_some(), "-i/--identity"),
        (k.expire.is_some(), "-x/--expire"),
        (k.body_length, "--body-length"),
        (a.sign.strip_own, "--strip-own"),
    ] {
        if given {
            return Err(usage(format!("{flag} is a DKIM-Signature option; an ARC set has no such tag")));
        }
    }
    // RFC 8617 §4.1.2: an ARC-Message-Signature never signs ARC-Seal fields.
    for list in [&k.headers, &k.oversign].into_iter().flatten() {
        if list.split(':').any(|h| h.trim().eq_ignore_ascii_case("arc-seal")) {
            return Err(usage("--headers/--oversign: an ARC-Message-Signature may not sign ARC-Seal"));
        }
    }
    let cache = KeyCache::with_limit(
        key_lookup(&a.records)?,
        std::num::NonZeroUsize::new(dkimpress::lookup::DEFAULT_DNS_CONCURRENCY).expect("a positive default"),
    );
    let mut cfg = SignConfig::from_args(a.sign)?;
    cfg.opts.policy.dkim = false;
    cfg.opts.policy.arc = Some(ArcSealing {
        authserv_id: a.authserv_id,
        verify: a.verify,
        keys: Box::new(move |s, d| cache.get(s, d)),
        policy: Policy { min_rsa_bits: a.min_key_bits, ..Policy::default() },
    });
    cmd_sign(cfg)
}
