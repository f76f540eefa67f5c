//! Bot traffic: high-rate clients that never sign in, half from cloud
//! ranges and half from residential proxies, some of which share a real
//! household's address.

use rand::Rng;

use crate::event::{Ev, Kind, NONE, Source};
use crate::net::{self, Ip};
use crate::population::Population;
use crate::rng::{SimRng, between, chance, index};
use crate::timefmt::DAY_MS;

const HOUR: u64 = 3_600_000;

/// Appends bot `b`'s events for `day` (scenario day number) to `out`.
pub(crate) fn bot_day(
    pop: &mut Population,
    b: usize,
    day: u32,
    rng: &mut SimRng,
    out: &mut Vec<Ev>,
) {
    let Some(bot) = pop.bots.get(b) else { return };
    let (id, datacenter, victim, ua) = (bot.id, bot.datacenter, bot.victim, bot.ua);
    let n = (bot.rate * (0.6 + 0.8 * rng.random::<f64>())) as u32;
    let victim_ip = victim
        .and_then(|h| pop.households.get(h as usize))
        .map(|h| h.v4);
    let day_ms = u64::from(day) * DAY_MS;
    // Residential proxy networks hand out a different exit address for
    // most bursts, so these bots show up on many addresses a day.
    // Some cloud bots stick to a couple of hosts for the day.
    let sticky_v6 = chance(rng, 0.3);
    let sticky = [net::datacenter(rng, false), net::datacenter(rng, sticky_v6)];
    let sticky_bot = chance(rng, 0.5);
    let mut emitted = 0u32;
    let mut pushed = 0u64;
    while emitted < n {
        let burst = (between(rng, 5, 40) as u32).min(n - emitted);
        let use_victim = victim_ip.is_some() && chance(rng, 0.4);
        // Bursts on a household's address favour the evening, when the
        // household itself is online: the most dangerous overlap.
        let mut t = if use_victim && chance(rng, 0.6) {
            between(rng, 18 * HOUR, 23 * HOUR)
        } else {
            between(rng, 0, DAY_MS - 1)
        };
        let ip = match (datacenter, victim_ip) {
            (true, _) if sticky_bot => sticky.get(index(rng, 2)).copied().unwrap_or(sticky[0]),
            (true, _) => {
                let v6 = chance(rng, 0.2);
                net::datacenter(rng, v6)
            }
            (false, Some(v)) if use_victim => Ip::V4(v),
            (false, _) => Ip::V4(net::residential_v4(rng)),
        };
        // `burst` is at least 1, so the outer loop always advances.
        emitted += burst.max(1);
        for _ in 0..burst {
            if t >= DAY_MS {
                break;
            }
            let ts = day_ms + t;
            let r: f64 = rng.random();
            let (kind, src) = if r < 0.7 {
                (Kind::PageView, Source::Web)
            } else if r < 0.9 {
                (Kind::WidgetView, Source::Web)
            } else {
                (Kind::AdImpression, Source::Ads)
            };
            out.push(Ev {
                key: t,
                ts,
                ip,
                id,
                acct: NONE,
                kind,
                src,
                ua,
            });
            pushed += 1;
            t += between(rng, 200, 20_000);
        }
    }
    if let Some(rec) = pop.ids.get_mut(id as usize) {
        rec.events += pushed;
    }
}
