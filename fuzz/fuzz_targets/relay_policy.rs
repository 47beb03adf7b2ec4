//! The relay policy driven by any interleaving of client bytes, provider bytes, time, worker
//! verdicts, interceptor replies and own commands (an interceptor that raises its limit per
//! literal too, and a memory share that may refuse a collected command): it never panics, every
//! step covers bytes that were there, and nothing is asked of the interceptor while it is at work.
//! With the setup's bit 64, client bytes are framed as a relay lane frames them while the policy
//! is lane-ready (`client_input_lane`, the interceptor's commands watched): a watched command is
//! left unframed and then framed the ordinary way, and a lane never collects; what a lane
//! would send ahead before framing it (`client_express`, `provider_express`) is what the
//! policy then forwards, whole and unchanged.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use coi_proxy::imap::session::policy::{Event, Keep, LaneInput, Policy, PolicyOptions};
use coi_proxy::imap::session::quiet::Verdicts;
use coi_proxy::imap::wire::command::CommandName;
use coi_proxy::imap::wire::framing::Framer;
use coi_proxy::imap::wire::provider::MAX_INTERCEPTED;
use coi_proxy::limits::budget::Budget;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else { return };
    let opts = PolicyOptions {
        max_literal: 300,
        autologout: Duration::from_secs(1800),
        provider_timeout: Duration::from_secs(300),
        extra_capabilities: vec!["COI"],
        emulate_idle: (setup & 1 == 1).then_some(Duration::from_secs(10)),
        rescan: setup & 16 == 16,
        quiet: (setup & 2 == 2).then(|| Arc::new(move || setup & 4 == 4) as Arc<dyn Fn() -> bool + Send + Sync>),
        compress: setup & 8 == 8,
        // A small share, so collected commands are both taken and refused for memory.
        memory: (setup & 32 == 32).then(|| Budget::new(1 << 20, 100_000).account("a")),
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut policy = Policy::new(opts, Framer::new(256), Framer::new(256), Verdicts::default(), now);
    let (mut client, mut provider) = (Vec::new(), Vec::new());
    let mut intercepting = false;
    let mut verdicts = Verdicts::default();
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        match kind % 6 {
            0 => client.extend_from_slice(chunk),
            1 => provider.extend_from_slice(chunk),
            2 => now += Duration::from_millis(u64::from(*len) * 100),
            3 if intercepting => {
                policy.interceptor_reply(chunk.to_vec(), now);
                intercepting = false;
            }
            4 if intercepting => policy.own_request(chunk.to_vec(), &[b"* METADATA "], now),
            5 => {
                verdicts.kept += u64::from(*len & 1);
                verdicts.moved += u64::from(*len >> 7);
                policy.set_verdicts(verdicts, now);
            }
            _ => {}
        }
        if policy.deadline().is_some_and(|d| d <= now) {
            policy.tick(now);
        }
        // METADATA up to the usual limit; APPEND up to a limit that grows with each literal
        // line (as the decrypted view raises it for MULTIAPPEND).
        let wants = |name, _uid: bool, line: &[u8]| match name {
            CommandName::GetMetadata | CommandName::SetMetadata | CommandName::Create => Some(MAX_INTERCEPTED),
            CommandName::Append => Some(200 + 8 * line.len()),
            _ => None,
        };
        let lane = setup & 64 == 64;
        let watched = |name, _uid: bool| {
            matches!(
                name,
                CommandName::GetMetadata | CommandName::SetMetadata | CommandName::Create | CommandName::Append
            )
        };
        // What a lane would send ahead (`policy/express.rs`) the policy then forwards whole.
        if lane && policy.lane_ready() {
            if let Some(express) = policy.client_express(&client, watched) {
                assert!(policy.client_expressed(&client, express, now), "client input sent ahead is forwarded");
                client.clear();
            }
        }
        if lane && policy.lane_ready() && policy.provider_express(&provider) {
            assert!(policy.provider_expressed(&provider, now), "provider input sent ahead is forwarded");
            provider.clear();
        }
        loop {
            let step = if lane && !client.is_empty() && policy.lane_ready() {
                match policy.client_input_lane(&client, now, watched) {
                    LaneInput::Step(step) => {
                        assert_ne!(step.keep, Keep::Collect, "a lane collects nothing");
                        Some(step)
                    }
                    LaneInput::More => None,
                    // Left whole for the ordinary framing, which takes it now.
                    LaneInput::Watched => {
                        let step = policy.client_input(&client, now, wants);
                        assert!(step.is_some(), "a watched command is framed the ordinary way");
                        step
                    }
                }
            } else {
                policy.client_input(&client, now, wants)
            };
            let Some(step) = step else { break };
            assert!(step.len > 0 && step.len <= client.len());
            client.drain(..step.len);
        }
        while let Some(step) = policy.provider_input(&provider, now) {
            assert!(step.len > 0 && step.len <= provider.len());
            provider.drain(..step.len);
        }
        let _ = policy.poll_to_client();
        let _ = policy.poll_to_provider();
        while let Some(event) = policy.poll_event() {
            match event {
                Event::Intercept(_) => {
                    assert!(!intercepting, "one command at a time");
                    intercepting = true;
                }
                Event::End(_) => return,
                _ => {}
            }
        }
    }
});
