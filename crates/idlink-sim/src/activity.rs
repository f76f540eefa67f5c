//! One person's day: which sessions they have, where, on which devices,
//! and the events (including sign-ins and sign-outs) those sessions emit.

use rand::Rng;

use crate::event::{Ev, Kind, NONE, Source};
use crate::net::{self, Ip};
use crate::population::{DeviceKind, Population};
use crate::rng::{SimRng, between, chance, count, index, mix, weighted};
use crate::timefmt::DAY_MS;

const MIN: u32 = 60_000;
const HOUR: u32 = 60 * MIN;

/// Calendar facts about the day being generated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DayInfo {
    /// Scenario day number (0-based).
    pub day: u32,
    /// Saturday or Sunday: no office, different session pattern.
    pub weekend: bool,
}

impl DayInfo {
    /// Milliseconds from scenario start to the start of this day.
    pub(crate) fn start_ms(&self) -> u64 {
        u64::from(self.day) * DAY_MS
    }
}

/// Where a session happens; decides the address devices get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The household's network (IPv4, or the home /64 when dual-stack).
    Home,
    /// An office NAT address (index into the offices).
    Office(u32),
    /// Mobile data: carrier-grade NAT or public carrier pool addresses.
    Mobile,
    /// Café or airport Wi-Fi (index into the venues).
    Venue(u32),
}

/// A stretch of use: start and end in ms within the day.
#[derive(Clone, Copy, Debug)]
struct Session {
    /// Start, ms within the day.
    start: u32,
    /// End, ms within the day (never past midnight).
    end: u32,
    /// Where it happens.
    place: Place,
}

/// The devices of one session and where each one's address comes from.
#[derive(Clone, Copy, Debug)]
struct Pick {
    /// The device the session is mostly on.
    primary: u32,
    /// Where the primary device's address comes from.
    primary_place: Place,
    /// A second own device used within minutes, and its address source
    /// (a phone at the office may be on mobile data).
    secondary: Option<(u32, Place)>,
}

/// Generates people's days. Holds scratch buffers so that millions of
/// person-days do not allocate.
#[derive(Default)]
pub(crate) struct ActivityGen {
    /// Percent of home sessions aligned with a housemate's that day.
    sync_percent: u32,
    /// The day `home_starts` belongs to.
    home_day: u32,
    /// Start of every home session planned so far today, by household:
    /// what a synced session aligns with.
    home_starts: std::collections::HashMap<u32, Vec<u32>>,
    /// The current person's sessions for the day.
    sessions: Vec<Session>,
    /// Event times of the current device in the current session.
    times: Vec<u32>,
    /// Candidate devices for the current session.
    devices: Vec<u32>,
}

/// The devices a person can reach, by kind.
#[derive(Default, Clone, Copy)]
struct Kit {
    /// The phone: the only device used on mobile data.
    phone: Option<u32>,
    /// The laptop: home, sometimes office and cafés.
    laptop: Option<u32>,
    /// The desktop: home only.
    desktop: Option<u32>,
    /// A personal tablet: home and cafés.
    tablet: Option<u32>,
    /// The household's shared tablet: home only.
    shared: Option<u32>,
}

impl ActivityGen {
    /// A generator whose home sessions follow a housemate's `sync_percent`
    /// percent of the time.
    pub(crate) fn new(sync_percent: u32) -> Self {
        ActivityGen {
            sync_percent,
            ..ActivityGen::default()
        }
    }

    /// Moves `sync_percent` of the current person's home sessions to
    /// within ten minutes of a housemate's planned earlier today, and
    /// remembers them all for the housemates planned after. Draws nothing at 0 %, so
    /// default scenarios keep their bytes.
    fn sync_home_sessions(&mut self, household: u32, day: u32, rng: &mut SimRng) {
        if self.sync_percent == 0 {
            return;
        }
        if self.home_day != day {
            self.home_starts.clear();
            self.home_day = day;
        }
        let starts = self.home_starts.entry(household).or_default();
        let earlier = starts.len();
        for s in self.sessions.iter_mut().filter(|s| s.place == Place::Home) {
            if earlier > 0 && chance(rng, f64::from(self.sync_percent) / 100.0) {
                let with = starts.get(index(rng, earlier)).copied().unwrap_or(s.start);
                let len = s.end.saturating_sub(s.start);
                s.start =
                    (with + between(rng, 0, u64::from(10 * MIN)) as u32).min(DAY_MS as u32 - 1);
                s.end = (s.start + len).min(DAY_MS as u32 - 1);
            }
            starts.push(s.start);
        }
    }

    /// Appends person `p`'s events for the day to `out`.
    pub(crate) fn person_day(
        &mut self,
        pop: &mut Population,
        p: u32,
        day: DayInfo,
        rng: &mut SimRng,
        out: &mut Vec<Ev>,
    ) {
        let Some(person) = pop.persons.get(p as usize) else {
            return;
        };
        if person.stop_at.is_some_and(|t| t <= day.start_ms()) {
            return;
        }
        let mut kit = Kit {
            shared: person.shared,
            ..Kit::default()
        };
        for &d in &person.devices {
            let slot = match pop.devices.get(d as usize).map(|x| x.kind) {
                Some(DeviceKind::Phone) => &mut kit.phone,
                Some(DeviceKind::Laptop) => &mut kit.laptop,
                Some(DeviceKind::Desktop) => &mut kit.desktop,
                Some(DeviceKind::Tablet) => &mut kit.tablet,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(d);
            }
        }
        self.plan_sessions(pop, p, day, rng);
        self.sync_home_sessions(person.household, day.day, rng);
        let sessions = std::mem::take(&mut self.sessions);
        for s in &sessions {
            self.run_session(pop, p, &kit, *s, day, rng, out);
        }
        self.sessions = sessions;
    }

    fn plan_sessions(&mut self, pop: &Population, p: u32, day: DayInfo, rng: &mut SimRng) {
        self.sessions.clear();
        let Some(person) = pop.persons.get(p as usize) else {
            return;
        };
        let act = person.activity.sqrt();
        let venues = pop.venues.len();
        let mut add = |rng: &mut SimRng,
                       prob: f64,
                       from: u32,
                       to: u32,
                       dmin: u32,
                       dmax: u32,
                       place: Place| {
            if chance(rng, (prob * act).min(0.97)) {
                let start = between(rng, u64::from(from), u64::from(to)) as u32;
                let dur = between(rng, u64::from(dmin * MIN), u64::from(dmax * MIN)) as u32;
                let end = (start + dur).min(DAY_MS as u32 - 1);
                self.sessions.push(Session { start, end, place });
            }
        };
        let h = |x: f64| (x * f64::from(HOUR)) as u32;
        let out_place = |rng: &mut SimRng, airport_ok: bool| -> Place {
            let r: f64 = rng.random();
            if r < 0.65 || venues == 0 {
                Place::Mobile
            } else if airport_ok && r > 0.95 {
                Place::Venue((venues - 1) as u32)
            } else {
                Place::Venue(index(rng, venues.saturating_sub(1).max(1)) as u32)
            }
        };
        if day.weekend {
            add(rng, 0.65, h(8.0), h(11.5), 10, 60, Place::Home);
            let place = out_place(rng, true);
            add(rng, 0.5, h(12.0), h(18.0), 10, 60, place);
            add(rng, 0.35, h(13.0), h(18.0), 10, 45, Place::Home);
            add(rng, 0.8, h(18.0), h(23.0), 15, 90, Place::Home);
        } else {
            add(rng, 0.5, h(6.25), h(8.75), 5, 25, Place::Home);
            let at_office = person.office.filter(|_| chance(rng, 0.75));
            if let Some(o) = at_office {
                add(rng, 0.45, h(7.5), h(9.0), 5, 20, Place::Mobile);
                let n = between(rng, 2, 4);
                for _ in 0..n {
                    add(rng, 1.0, h(9.0), h(17.0), 10, 50, Place::Office(o));
                }
                let lunch = match weighted(rng, &[0.6, 0.25, 0.15]) {
                    0 => Place::Mobile,
                    1 => out_place(rng, false),
                    _ => Place::Office(o),
                };
                add(rng, 0.5, h(12.0), h(13.5), 10, 30, lunch);
                add(rng, 0.4, h(17.0), h(18.5), 5, 20, Place::Mobile);
            } else {
                add(rng, 0.5, h(9.0), h(17.0), 5, 40, Place::Home);
                let place = out_place(rng, true);
                add(rng, 0.4, h(9.0), h(17.0), 5, 40, place);
            }
            add(rng, 0.85, h(18.0), h(22.5), 15, 90, Place::Home);
            add(rng, 0.35, h(19.0), h(23.0), 10, 45, Place::Home);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_session(
        &mut self,
        pop: &mut Population,
        p: u32,
        kit: &Kit,
        s: Session,
        day: DayInfo,
        rng: &mut SimRng,
        out: &mut Vec<Ev>,
    ) {
        let Some(person) = pop.persons.get(p as usize) else {
            return;
        };
        let (brings_laptop, phone_wifi, cgnat, act) = (
            person.brings_laptop,
            person.phone_office_wifi,
            person.cgnat,
            person.activity,
        );
        let Some(pick) = self.pick_devices(pop, kit, s.place, brings_laptop, phone_wifi, rng)
        else {
            return;
        };
        let primary = pick.primary;
        let mobile_ip = self.mobile_address(pop, kit.phone.unwrap_or(primary), cgnat, day, rng);
        let dur_min = f64::from(s.end.saturating_sub(s.start)) / f64::from(MIN);
        let ip = self.address(pop, primary, pick.primary_place, mobile_ip, day, rng);
        // The second device joins within minutes and is used alongside
        // the first one (a phone next to the laptop): the real co-location
        // signal between a person's own devices.
        let second_window = pick.secondary.map(|_| {
            let start = (s.start + between(rng, 0, u64::from(5 * MIN)) as u32).min(s.end);
            let len = between(rng, u64::from(3 * MIN), u64::from(20 * MIN)) as u32;
            (start, (start + len).min(s.end))
        });
        self.times.clear();
        let n = 1 + count(rng, act * (0.5 + dur_min / 15.0));
        self.push_times(rng, s.start, s.end, n);
        if let Some((a, b)) = second_window {
            let n = 1 + count(rng, 1.0);
            self.push_times(rng, a, b, n);
        }
        let first = out.len();
        self.device_events(pop, p, primary, ip, day, rng, out);
        end_in_browser(pop, primary, day, out.get_mut(first..).unwrap_or_default());
        if let (Some((sec, place_of_secondary)), Some((a, b))) = (pick.secondary, second_window) {
            let ip = self.address(pop, sec, place_of_secondary, mobile_ip, day, rng);
            self.times.clear();
            let n = 1 + count(rng, act * (0.3 + dur_min / 30.0));
            self.push_times(rng, a, b, n);
            let first = out.len();
            self.device_events(pop, p, sec, ip, day, rng, out);
            end_in_browser(pop, sec, day, out.get_mut(first..).unwrap_or_default());
        }
    }

    /// Adds `n` uniform event times between `t0` and `t1` to `self.times`.
    fn push_times(&mut self, rng: &mut SimRng, t0: u32, t1: u32, n: u32) {
        for _ in 0..n {
            self.times
                .push(between(rng, u64::from(t0), u64::from(t1.max(t0))) as u32);
        }
    }

    /// Chooses the devices of a session: a primary one and, often, a
    /// second one of the person's own devices. Returns `None` when the
    /// person has no device that fits the place.
    fn pick_devices(
        &mut self,
        pop: &Population,
        kit: &Kit,
        place: Place,
        brings_laptop: bool,
        phone_wifi: bool,
        rng: &mut SimRng,
    ) -> Option<Pick> {
        let same = |d: u32| (d, place);
        match place {
            Place::Home => {
                self.devices.clear();
                let all = [kit.phone, kit.laptop, kit.desktop, kit.tablet, kit.shared];
                self.devices.extend(all.into_iter().flatten());
                let weights: Vec<f64> = self
                    .devices
                    .iter()
                    .map(|&d| match pop.devices.get(d as usize).map(|x| x.kind) {
                        Some(DeviceKind::Phone) => 0.45,
                        Some(DeviceKind::Laptop) => 0.3,
                        Some(DeviceKind::Desktop | DeviceKind::SharedTablet) => 0.25,
                        _ => 0.2,
                    })
                    .collect();
                let n = self.devices.len();
                let i = weighted(rng, &weights);
                let primary = *self.devices.get(i)?;
                let second = if n > 1 && chance(rng, 0.4) {
                    self.devices.get((i + 1 + index(rng, n - 1)) % n).copied()
                } else {
                    None
                };
                Some(Pick {
                    primary,
                    primary_place: place,
                    secondary: second.map(same),
                })
            }
            Place::Office(_) => {
                // A phone without the office Wi-Fi stays on mobile data.
                let place_of = |d: u32| {
                    if Some(d) == kit.phone && !phone_wifi {
                        (d, Place::Mobile)
                    } else {
                        (d, place)
                    }
                };
                let laptop = kit.laptop.filter(|_| brings_laptop);
                let (first, second) = match (laptop, kit.phone) {
                    (Some(l), Some(ph)) if chance(rng, 0.7) => (l, Some(ph)),
                    (Some(l), Some(ph)) => (ph, Some(l)),
                    (Some(d), None) | (None, Some(d)) => (d, None),
                    (None, None) => return None,
                };
                let (primary, primary_place) = place_of(first);
                let secondary = second.filter(|_| chance(rng, 0.4)).map(place_of);
                Some(Pick {
                    primary,
                    primary_place,
                    secondary,
                })
            }
            // Occasionally a laptop is tethered to the phone and shares its
            // carrier address: a true co-location on a shared pool.
            Place::Mobile => kit.phone.map(|ph| Pick {
                primary: ph,
                primary_place: place,
                secondary: kit.laptop.filter(|_| chance(rng, 0.04)).map(same),
            }),
            Place::Venue(_) => {
                let (first, second) = match (kit.phone, kit.laptop.or(kit.tablet)) {
                    (Some(ph), Some(b)) if chance(rng, 0.75) => (ph, Some(b)),
                    (Some(ph), Some(b)) => (b, Some(ph)),
                    (Some(d), None) | (None, Some(d)) => (d, None),
                    (None, None) => return None,
                };
                let secondary = second.filter(|_| chance(rng, 0.3)).map(same);
                Some(Pick {
                    primary: first,
                    primary_place: place,
                    secondary,
                })
            }
        }
    }

    fn mobile_address(
        &self,
        pop: &Population,
        phone: u32,
        cgnat: bool,
        day: DayInfo,
        rng: &mut SimRng,
    ) -> Ip {
        if cgnat {
            Ip::V4(
                pop.cgnat_pool
                    .get(index(rng, pop.cgnat_pool.len()))
                    .copied()
                    .unwrap_or(0x6440_0001),
            )
        } else if chance(rng, 0.3) {
            net::carrier_v6(pop.salt, phone, day.day)
        } else {
            Ip::V4(
                pop.carrier_pool
                    .get(index(rng, pop.carrier_pool.len()))
                    .copied()
                    .unwrap_or(0xac38_0001),
            )
        }
    }

    fn address(
        &self,
        pop: &Population,
        d: u32,
        place: Place,
        mobile: Ip,
        day: DayInfo,
        rng: &mut SimRng,
    ) -> Ip {
        let Some(dev) = pop.devices.get(d as usize) else {
            return mobile;
        };
        match place {
            Place::Home => {
                // Phones sometimes stay on mobile data at home.
                if dev.kind == DeviceKind::Phone && chance(rng, 0.08) {
                    return mobile;
                }
                let Some(hh) = pop.households.get(dev.household as usize) else {
                    return mobile;
                };
                match hh.v6 {
                    Some(prefix) if dev.v6 && chance(rng, 0.8) => {
                        Ip::V6(prefix, net::privacy_iid(pop.salt, d, day.day))
                    }
                    _ => Ip::V4(hh.v4),
                }
            }
            Place::Office(o) => pop.offices.get(o as usize).map_or(mobile, |x| Ip::V4(x.v4)),
            Place::Venue(v) => pop.venues.get(v as usize).map_or(mobile, |x| Ip::V4(x.v4)),
            Place::Mobile => mobile,
        }
    }

    /// Emits events of person `p` on device `d` at the times in
    /// `self.times` (ms within the day), with sign-in and sign-out
    /// decisions.
    #[allow(clippy::too_many_arguments)]
    fn device_events(
        &mut self,
        pop: &mut Population,
        p: u32,
        d: u32,
        ip: Ip,
        day: DayInfo,
        rng: &mut SimRng,
        out: &mut Vec<Ev>,
    ) {
        let Some(person) = pop.persons.get(p as usize) else {
            return;
        };
        let stop_at = person.stop_at.unwrap_or(u64::MAX);
        let my_acct = person.account;
        self.times.sort_unstable();
        let day_ms = day.start_ms();
        let Some(dev) = pop.devices.get_mut(d as usize) else {
            return;
        };
        let plan_idx = dev.plans.iter().position(|pl| pl.person == p);
        let (app, ua, kind) = (dev.app, dev.ua, dev.kind);
        let src = if app { Source::App } else { Source::Web };
        let mut last_ts = None;
        let mut logged_in_now = false;
        for (i, &t) in self.times.iter().enumerate() {
            let mut ts = day_ms + u64::from(t);
            if ts >= stop_at {
                break;
            }
            let id = dev.id_at(ts);
            if id != dev.state_id {
                // A new id (cookie reset or erasure) starts signed out.
                dev.signed = None;
                dev.state_id = id;
            }
            if let Some(a) = dev.signed
                && pop
                    .accounts
                    .get(a as usize)
                    .and_then(|x| x.erased_at)
                    .is_some_and(|e| e <= ts)
            {
                dev.signed = None;
            }
            if i == 0
                && let (Some(pi), Some(acct)) = (plan_idx, my_acct)
                && let Some(plan) = dev.plans.get_mut(pi)
                && plan.signs
                && day.day >= plan.first_day
                && dev.signed != Some(acct)
            {
                let login = match dev.signed {
                    Some(_) => chance(rng, 0.5),
                    None if !plan.logged_out => true,
                    None => !plan.once && chance(rng, 0.2),
                };
                if login {
                    out.push(Ev {
                        key: ts - day_ms,
                        ts,
                        ip,
                        id,
                        acct,
                        kind: Kind::Login,
                        src,
                        ua,
                    });
                    dev.signed = Some(acct);
                    logged_in_now = true;
                    // The first activity follows the sign-in by a moment.
                    // Never past the person's or the id's end of life.
                    let shifted = (ts + between(rng, 300, 4000)).min(day_ms + DAY_MS - 1);
                    if shifted < stop_at && dev.id_at(shifted) == id {
                        ts = shifted;
                    }
                }
            }
            let acct = dev.signed.unwrap_or(NONE);
            let (kind_ev, src_ev) = if i == 0 && app {
                (Kind::AppOpen, src)
            } else {
                let r: f64 = rng.random();
                if r < 0.62 {
                    (Kind::PageView, src)
                } else if r < 0.84 {
                    (Kind::WidgetView, src)
                } else if r < 0.94 {
                    (Kind::AdImpression, Source::Ads)
                } else {
                    (Kind::PageView, Source::Partner)
                }
            };
            out.push(Ev {
                key: ts - day_ms,
                ts,
                ip,
                id,
                acct,
                kind: kind_ev,
                src: src_ev,
                ua,
            });
            if let Some(rec) = pop.ids.get_mut(id as usize) {
                rec.events += 1;
                if acct != NONE {
                    rec.note_signed(acct);
                }
            }
            last_ts = Some((ts, id));
        }
        // Sign-out at the end of the session, for the person's own account.
        let (Some((ts, id)), Some(pi), Some(acct)) = (last_ts, plan_idx, my_acct) else {
            return;
        };
        if dev.signed != Some(acct) {
            return;
        }
        let Some(once) = dev.plans.get(pi).map(|pl| pl.once) else {
            return;
        };
        let p_out = match kind {
            DeviceKind::SharedTablet => 0.12,
            _ if app => 0.01,
            _ => 0.03,
        };
        if (once && logged_in_now) || chance(rng, p_out) {
            let ts = (ts + between(rng, 1000, 60_000)).min(day_ms + DAY_MS - 1);
            if ts < stop_at && dev.id_at(ts) == id {
                out.push(Ev {
                    key: ts - day_ms,
                    ts,
                    ip,
                    id,
                    acct,
                    kind: Kind::Logout,
                    src,
                    ua,
                });
                dev.signed = None;
                if let Some(plan) = dev.plans.get_mut(pi) {
                    plan.logged_out = true;
                }
            }
        }
    }
}

/// Half the sessions of an app phone that has its own browser end in the
/// browser: the later activity of `events` (the session's events on phone
/// `d`) goes out under the browser's id, from the same address (one
/// phone, two ids). Which sessions, and where they switch, is a hash of
/// the phone, the day and the session's first event, not a draw: the
/// scenario's events are the same as without browsers, only some of them
/// are seen under another id.
fn end_in_browser(pop: &mut Population, d: u32, day: DayInfo, events: &mut [Ev]) {
    let Some(browser) = pop
        .devices
        .get(d as usize)
        .and_then(|x| x.browser)
        .and_then(|b| pop.devices.get(b as usize))
    else {
        return;
    };
    let Some(start) = events.iter().map(|e| e.ts).min() else {
        return;
    };
    let coin = mix(u64::from(d) << 32 ^ u64::from(day.day) << 24 ^ start);
    if coin & 1 == 0 || events.len() < 2 {
        return;
    }
    let mut times: Vec<u64> = events.iter().map(|e| e.ts).collect();
    times.sort_unstable();
    let switch = times
        .get(1 + (coin >> 1) as usize % (times.len() - 1))
        .copied();
    for e in events
        .iter_mut()
        .filter(|e| switch.is_some_and(|t| e.ts >= t))
        .filter(|e| !matches!(e.kind, Kind::Login | Kind::Logout))
    {
        let id = browser.id_at(e.ts);
        for (rec, step) in [(e.id, -1), (id, 1)] {
            if let Some(r) = pop.ids.get_mut(rec as usize) {
                r.events = r.events.saturating_add_signed(step);
            }
        }
        e.id = id;
        e.acct = NONE;
        e.ua = browser.ua;
        if e.kind == Kind::AppOpen {
            e.kind = Kind::PageView;
        }
        if e.src == Source::App {
            e.src = Source::Web;
        }
    }
}
