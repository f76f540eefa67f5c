//! The privacy plan: which accounts opt out (and back in), which accounts
//! and device ids are erased, when, and when each request is written to
//! the event file (some arrive hours or days late).

use std::collections::BTreeMap;

use crate::event::{Ev, Kind, NONE, Source};
use crate::ids;
use crate::net::Ip;
use crate::population::{IdOrigin, IdOwner, PersonClass, Population};
use crate::rng::{SimRng, between, chance};
use crate::timefmt::DAY_MS;

const HOUR: u64 = 3_600_000;

/// One privacy request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    /// When the request takes effect (ms since scenario start).
    pub ts: u64,
    /// When it is written to the file (at or after `ts`).
    pub write: u64,
    /// Opt-out, opt-in or erase.
    pub kind: Kind,
    /// Target account index, or [`NONE`].
    pub account: u32,
    /// Target device id index, or [`NONE`].
    pub id: u32,
}

/// All privacy requests of a scenario, sorted by write time.
#[derive(Clone, Debug, Default)]
pub(crate) struct PrivacyPlan {
    /// Requests, sorted by `write`.
    pub requests: Vec<Request>,
    /// First request not yet written.
    next: usize,
}

impl PrivacyPlan {
    /// Draws the plan and applies its consequences to the population:
    /// erased people stop at their erase time, erased device ids are
    /// replaced by a fresh id from the erase time on.
    pub(crate) fn draw(pop: &mut Population, days: u32, rng: &mut SimRng) -> PrivacyPlan {
        let span = u64::from(days) * DAY_MS;
        let mut requests = Vec::new();
        let late = |rng: &mut SimRng, ts: u64| -> u64 {
            if chance(rng, 0.3) {
                (ts + between(rng, HOUR, 72 * HOUR)).min(span - 1)
            } else {
                (ts + between(rng, 0, 30_000)).min(span - 1)
            }
        };
        let signers: Vec<(u32, u32)> = pop
            .persons
            .iter()
            .enumerate()
            .filter(|(_, p)| p.class == PersonClass::Signer)
            .filter_map(|(i, p)| p.account.map(|a| (i as u32, a)))
            .collect();
        for &(person, account) in &signers {
            if chance(rng, 0.02) {
                let ts = between(rng, DAY_MS / 4, span - 1);
                let write = late(rng, ts);
                requests.push(Request {
                    ts,
                    write,
                    kind: Kind::OptOut,
                    account,
                    id: NONE,
                });
                if chance(rng, 0.25) && ts + HOUR < span - 1 {
                    let back = between(rng, ts + HOUR, span - 1);
                    let write = late(rng, back);
                    requests.push(Request {
                        ts: back,
                        write,
                        kind: Kind::OptIn,
                        account,
                        id: NONE,
                    });
                }
            }
            if chance(rng, 0.01) {
                let ts = between(rng, span * 15 / 100, span * 95 / 100);
                let write = late(rng, ts);
                requests.push(Request {
                    ts,
                    write,
                    kind: Kind::Erase,
                    account,
                    id: NONE,
                });
                if let Some(a) = pop.accounts.get_mut(account as usize) {
                    a.erased_at = Some(ts);
                }
                if let Some(p) = pop.persons.get_mut(person as usize) {
                    p.stop_at = Some(ts);
                }
            }
        }
        for d in 0..pop.devices.len() as u32 {
            if !chance(rng, 0.005) {
                continue;
            }
            let ts = between(rng, span / 10, span * 95 / 100);
            let Some(dev) = pop.devices.get(d as usize) else {
                continue;
            };
            let old = dev.id_at(ts);
            let app = dev.app;
            if let Some(rec) = pop.ids.get_mut(old as usize) {
                rec.erased_at = Some(ts);
            }
            let text = if app {
                ids::uuid_v4(rng)
            } else {
                ids::cookie_id(rng)
            };
            let new = pop.push_id(text, IdOwner::Device(d), IdOrigin::EraseSuccessor);
            pop.insert_span(d, ts, new);
            let write = late(rng, ts);
            requests.push(Request {
                ts,
                write,
                kind: Kind::Erase,
                account: NONE,
                id: old,
            });
        }
        requests.sort_by_key(|r| (r.write, r.ts, r.account, r.id));
        PrivacyPlan { requests, next: 0 }
    }

    /// Appends the requests written during `day` to `out` (keyed by their
    /// write position, carrying their effective `ts`).
    pub(crate) fn emit_day(&mut self, day: u32, out: &mut Vec<Ev>) {
        let start = u64::from(day) * DAY_MS;
        let end = start + DAY_MS;
        while let Some(r) = self.requests.get(self.next) {
            if r.write >= end {
                break;
            }
            out.push(Ev {
                key: r.write.saturating_sub(start),
                ts: r.ts,
                ip: Ip::V4(0),
                id: r.id,
                acct: r.account,
                kind: r.kind,
                src: Source::Web,
                ua: 0,
            });
            self.next += 1;
        }
    }

    /// Accounts whose last opt request (by effective time) is an opt-out.
    pub(crate) fn opted_out_at_end(&self) -> Vec<u32> {
        let mut last: BTreeMap<u32, (u64, Kind)> = BTreeMap::new();
        for r in &self.requests {
            if matches!(r.kind, Kind::OptOut | Kind::OptIn) {
                let e = last.entry(r.account).or_insert((r.ts, r.kind));
                if r.ts >= e.0 {
                    *e = (r.ts, r.kind);
                }
            }
        }
        last.into_iter()
            .filter(|(_, (_, k))| *k == Kind::OptOut)
            .map(|(a, _)| a)
            .collect()
    }

    /// Number of requests in the plan.
    pub(crate) fn len(&self) -> u64 {
        self.requests.len() as u64
    }
}
