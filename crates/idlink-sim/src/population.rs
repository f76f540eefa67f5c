//! The simulated world: people, households, devices, workplaces, public
//! venues, carrier pools and bots. Built once per scenario; the day
//! generators then only mutate per-device sign-in state and per-id
//! bookkeeping.

use rand::seq::SliceRandom;

use crate::agents;
use crate::ids;
use crate::net;
use crate::rng::{SimRng, between, chance, count, index, spread, weighted};
use crate::timefmt::DAY_MS;

/// Fraction of all device ids that are bots.
const BOT_SHARE: f64 = 0.0101;
/// Daily chance that a browser clears its cookies (new device id).
const COOKIE_RESET_PER_DAY: f64 = 0.004;

/// What kind of hardware a device is; drives where it can be used and
/// which id/user-agent shape it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceKind {
    /// Carried everywhere; the only device used on mobile networks.
    Phone,
    /// Used at home, sometimes taken to the office or a café.
    Laptop,
    /// Stays at home.
    Desktop,
    /// A personal tablet, used at home.
    Tablet,
    /// A household tablet used by several members.
    SharedTablet,
}

/// Whether a person signs in on a device, and how far that has got.
#[derive(Clone, Debug)]
pub(crate) struct SignPlan {
    /// The person using the device.
    pub person: u32,
    /// True if this person ever signs in on this device.
    pub signs: bool,
    /// First scenario day on which the person signs in (devices signed in
    /// before the scenario use day 0 and start signed in).
    pub first_day: u32,
    /// Signs in once, logs out at the end of that session and never again:
    /// the device is then unsigned for the rest of the scenario.
    pub once: bool,
    /// True after the person logged out on this device; re-login is then
    /// only occasional.
    pub logged_out: bool,
}

/// One device id span: the id a device uses from `from_ms` on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdSpan {
    /// Milliseconds since scenario start when this id takes over.
    pub from_ms: u64,
    /// Index into [`Population::ids`].
    pub id: u32,
}

/// A physical device (or browser profile) used by one or more people.
#[derive(Clone, Debug)]
pub(crate) struct Device {
    /// Hardware kind.
    pub kind: DeviceKind,
    /// Native app install (UUID id, source "app") rather than a browser.
    pub app: bool,
    /// Index into the user-agent table.
    pub ua: u8,
    /// Household the device lives in.
    pub household: u32,
    /// One plan per person using the device.
    pub plans: Vec<SignPlan>,
    /// Ids over time, sorted by `from_ms` (cookie resets, erasures).
    pub ids: Vec<IdSpan>,
    /// Account currently signed in on the device, if any.
    pub signed: Option<u32>,
    /// The id the `signed` state belongs to; a new id starts signed out.
    pub state_id: u32,
    /// Whether the device speaks IPv6 when the home network offers it.
    pub v6: bool,
    /// For an app phone: the same phone's browser, a device of its own
    /// (a cookie id, the platform's browser user agent, never signed in)
    /// that some of the phone's sessions end in. One phone, two ids.
    pub browser: Option<u32>,
    /// This is such a browser: it has no sessions of its own, and is in
    /// no person's kit.
    pub is_phone_browser: bool,
}

impl Device {
    /// The id in use at `ts` (ms since scenario start).
    pub(crate) fn id_at(&self, ts: u64) -> u32 {
        let mut id = self.ids.first().map_or(0, |s| s.id);
        for span in &self.ids {
            if span.from_ms <= ts {
                id = span.id;
            } else {
                break;
            }
        }
        id
    }
}

/// Who emits events under a device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdOwner {
    /// A person-used device (index into [`Population::devices`]).
    Device(u32),
    /// A bot (index into [`Population::bots`]).
    Bot(u32),
}

/// Why an id exists; carried into the truth profile tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdOrigin {
    /// The device's first id.
    Original,
    /// New id after the browser cleared its cookies.
    CookieReset,
    /// New id after the previous one was erased on request.
    EraseSuccessor,
}

/// One device id as it appears in events, with the bookkeeping the truth
/// file needs.
#[derive(Clone, Debug)]
pub(crate) struct IdRecord {
    /// The id text written to events.
    pub text: String,
    /// Device or bot behind the id.
    pub owner: IdOwner,
    /// Accounts that appeared signed in on this id (sorted, unique).
    pub signed_in: Vec<u32>,
    /// Events emitted under this id; ids with none are left out of truth.
    pub events: u64,
    /// Why the id exists.
    pub origin: IdOrigin,
    /// When the id was erased, if it was.
    pub erased_at: Option<u64>,
}

impl IdRecord {
    /// Records that `account` appeared signed in on this id.
    pub(crate) fn note_signed(&mut self, account: u32) {
        if let Err(pos) = self.signed_in.binary_search(&account) {
            self.signed_in.insert(pos, account);
        }
    }
}

/// How a person relates to accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PersonClass {
    /// Has an account and signs in on at least one device.
    Signer,
    /// Has an account but never signs in here (it never appears in events).
    Dormant,
    /// Has no account at all.
    NoAccount,
}

/// A simulated person.
#[derive(Clone, Debug)]
pub(crate) struct Person {
    /// Household the person lives in.
    pub household: u32,
    /// Account index, for signers and dormant account holders.
    pub account: Option<u32>,
    /// Account relationship.
    pub class: PersonClass,
    /// Personal devices (1-3).
    pub devices: Vec<u32>,
    /// The household's shared tablet, if this person uses it.
    pub shared: Option<u32>,
    /// Workplace, for office workers.
    pub office: Option<u32>,
    /// Activity multiplier (heavy vs light users).
    pub activity: f64,
    /// Takes the laptop to the office.
    pub brings_laptop: bool,
    /// Phone joins the office Wi-Fi (otherwise it stays on mobile data).
    pub phone_office_wifi: bool,
    /// Carrier uses carrier-grade NAT (else a public address pool).
    pub cgnat: bool,
    /// The person stops producing events at this time (account erased).
    pub stop_at: Option<u64>,
}

/// A home.
#[derive(Clone, Debug)]
pub(crate) struct Household {
    /// Members (person indexes).
    pub members: Vec<u32>,
    /// Current public IPv4 address.
    pub v4: u32,
    /// Mean days between address changes; 0 for static addresses.
    pub dynamic_days: f64,
    /// Stable IPv6 /64 prefix, for dual-stack homes.
    pub v6: Option<u64>,
    /// Shared family tablet, if any.
    pub shared: Option<u32>,
}

/// A workplace behind one NAT address.
#[derive(Clone, Debug)]
pub(crate) struct Office {
    /// The NAT address.
    pub v4: u32,
    /// Small offices (3-8 people) are the dangerous ones for inference.
    pub small: bool,
}

/// A café or airport Wi-Fi.
#[derive(Clone, Debug)]
pub(crate) struct Venue {
    /// The venue's public address.
    pub v4: u32,
}

/// An account.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    /// Account id text.
    pub text: String,
    /// The person owning it.
    pub person: u32,
    /// When the account was erased, if it was.
    pub erased_at: Option<u64>,
}

/// An automated client.
#[derive(Clone, Debug)]
pub(crate) struct Bot {
    /// Index into [`Population::ids`].
    pub id: u32,
    /// Runs from cloud ranges (else from residential proxies).
    pub datacenter: bool,
    /// Mean events per day.
    pub rate: f64,
    /// A real household whose address the bot sometimes uses.
    pub victim: Option<u32>,
    /// User-agent index.
    pub ua: u8,
}

/// Everything the day generators need.
#[derive(Clone, Debug)]
pub(crate) struct Population {
    /// People.
    pub persons: Vec<Person>,
    /// Homes.
    pub households: Vec<Household>,
    /// Devices used by people.
    pub devices: Vec<Device>,
    /// Every device id (people's devices and bots).
    pub ids: Vec<IdRecord>,
    /// Accounts.
    pub accounts: Vec<Account>,
    /// Workplaces.
    pub offices: Vec<Office>,
    /// Public Wi-Fi venues.
    pub venues: Vec<Venue>,
    /// Bots.
    pub bots: Vec<Bot>,
    /// Carrier-grade NAT addresses phones draw from.
    pub cgnat_pool: Vec<u32>,
    /// Public carrier pool addresses phones draw from.
    pub carrier_pool: Vec<u32>,
    /// Addresses given up by dynamic homes, which the ISP hands out again.
    pub released: Vec<u32>,
    /// Salt for stateless per-device hashes (IPv6 interface ids).
    pub salt: u64,
}

impl Population {
    /// Builds the world for `people` persons over `days` days.
    /// `phone_browsers`: percent of app phones that also browse under a
    /// cookie of their own (see [`Device::browser`]).
    pub(crate) fn build(
        people: u32,
        days: u32,
        phone_browsers: u32,
        salt: u64,
        rng: &mut SimRng,
    ) -> Population {
        let mut pop = Population {
            persons: Vec::with_capacity(people as usize),
            households: Vec::new(),
            devices: Vec::new(),
            ids: Vec::new(),
            accounts: Vec::new(),
            offices: Vec::new(),
            venues: Vec::new(),
            bots: Vec::new(),
            cgnat_pool: Vec::new(),
            carrier_pool: Vec::new(),
            released: Vec::new(),
            salt,
        };
        pop.build_households(people, days, rng);
        pop.build_offices(rng);
        pop.build_networks(people, rng);
        pop.build_bots(rng);
        pop.plan_cookie_resets(days, rng);
        pop.add_phone_browsers(phone_browsers, rng);
        pop
    }

    /// Gives `percent` % of app phones their own browser. Runs last, so
    /// the rest of the population is drawn exactly as without browsers
    /// (the browsers' cookies are never reset), and draws nothing at 0 %.
    fn add_phone_browsers(&mut self, percent: u32, rng: &mut SimRng) {
        if percent == 0 {
            return;
        }
        for d in 0..self.devices.len() {
            let Some(phone) = self.devices.get(d) else {
                continue;
            };
            if phone.kind != DeviceKind::Phone
                || !phone.app
                || !chance(rng, f64::from(percent) / 100.0)
            {
                continue;
            }
            let plans = phone
                .plans
                .iter()
                .map(|p| SignPlan {
                    person: p.person,
                    signs: false,
                    first_day: 0,
                    once: false,
                    logged_out: false,
                })
                .collect();
            let (ua, household, v6) = (
                agents::phone_browser(phone.ua, rng),
                phone.household,
                phone.v6,
            );
            let b = self.devices.len() as u32;
            let id = self.push_id(ids::cookie_id(rng), IdOwner::Device(b), IdOrigin::Original);
            self.devices.push(Device {
                kind: DeviceKind::Phone,
                app: false,
                ua,
                household,
                plans,
                ids: vec![IdSpan { from_ms: 0, id }],
                signed: None,
                state_id: id,
                v6,
                browser: None,
                is_phone_browser: true,
            });
            if let Some(phone) = self.devices.get_mut(d) {
                phone.browser = Some(b);
            }
        }
    }

    fn build_households(&mut self, people: u32, days: u32, rng: &mut SimRng) {
        while (self.persons.len() as u32) < people {
            let left = people - self.persons.len() as u32;
            let size = (1 + weighted(rng, &[0.28, 0.34, 0.16, 0.15, 0.07]) as u32).min(left);
            let h = self.households.len() as u32;
            let dynamic_days = if chance(rng, 0.35) {
                2.0 + between(rng, 0, 5) as f64
            } else {
                0.0
            };
            self.households.push(Household {
                members: Vec::new(),
                v4: net::residential_v4(rng),
                dynamic_days,
                v6: chance(rng, 0.3).then(|| net::home_v6_prefix(rng)),
                shared: None,
            });
            for _ in 0..size {
                self.add_person(h, days, rng);
            }
            if size >= 2 && chance(rng, 0.35) {
                self.add_shared_tablet(h, days, rng);
            }
        }
    }

    fn add_person(&mut self, h: u32, days: u32, rng: &mut SimRng) {
        let p = self.persons.len() as u32;
        let class = match weighted(rng, &[0.75, 0.12, 0.13]) {
            0 => PersonClass::Signer,
            1 => PersonClass::Dormant,
            _ => PersonClass::NoAccount,
        };
        let account = (class != PersonClass::NoAccount).then(|| {
            let a = self.accounts.len() as u32;
            let text = ids::account_id(a, self.salt, rng);
            self.accounts.push(Account {
                text,
                person: p,
                erased_at: None,
            });
            a
        });
        self.persons.push(Person {
            household: h,
            account,
            class,
            devices: Vec::new(),
            shared: None,
            office: None,
            activity: spread(rng, 0.35),
            brings_laptop: chance(rng, 0.6),
            phone_office_wifi: chance(rng, 0.55),
            cgnat: chance(rng, 0.5),
            stop_at: None,
        });
        if let Some(hh) = self.households.get_mut(h as usize) {
            hh.members.push(p);
        }
        let n = 1 + weighted(rng, &[0.22, 0.45, 0.33]);
        let mut kinds = Vec::with_capacity(n);
        kinds.push(if chance(rng, 0.9) {
            DeviceKind::Phone
        } else {
            DeviceKind::Laptop
        });
        while kinds.len() < n {
            let k = match weighted(rng, &[0.05, 0.5, 0.2, 0.25]) {
                0 => DeviceKind::Phone,
                1 => DeviceKind::Laptop,
                2 => DeviceKind::Desktop,
                _ => DeviceKind::Tablet,
            };
            if k == DeviceKind::Phone || !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        let mut signs: Vec<bool> = kinds
            .iter()
            .map(|k| {
                let p_sign = match k {
                    DeviceKind::Phone => 0.72,
                    DeviceKind::Laptop => 0.5,
                    DeviceKind::Desktop => 0.45,
                    _ => 0.5,
                };
                class == PersonClass::Signer && chance(rng, p_sign)
            })
            .collect();
        if class == PersonClass::Signer && !signs.contains(&true) {
            let i = index(rng, signs.len());
            if let Some(s) = signs.get_mut(i) {
                *s = true;
            }
        }
        for (kind, sign) in kinds.into_iter().zip(signs) {
            let d = self.add_device(kind, h, vec![(p, sign)], days, rng);
            if let Some(person) = self.persons.get_mut(p as usize) {
                person.devices.push(d);
            }
        }
    }

    fn add_shared_tablet(&mut self, h: u32, days: u32, rng: &mut SimRng) {
        let members = self
            .households
            .get(h as usize)
            .map(|x| x.members.clone())
            .unwrap_or_default();
        let mut users: Vec<u32> = members
            .iter()
            .copied()
            .filter(|_| chance(rng, 0.75))
            .collect();
        if users.len() < 2 {
            users = members.iter().copied().take(2).collect();
        }
        let users: Vec<(u32, bool)> = users
            .into_iter()
            .map(|p| {
                let signer = self
                    .persons
                    .get(p as usize)
                    .is_some_and(|x| x.class == PersonClass::Signer);
                (p, signer && chance(rng, 0.5))
            })
            .collect();
        let d = self.add_device(DeviceKind::SharedTablet, h, users.clone(), days, rng);
        for (p, _) in users {
            if let Some(person) = self.persons.get_mut(p as usize) {
                person.shared = Some(d);
            }
        }
        if let Some(hh) = self.households.get_mut(h as usize) {
            hh.shared = Some(d);
        }
    }

    fn add_device(
        &mut self,
        kind: DeviceKind,
        h: u32,
        users: Vec<(u32, bool)>,
        days: u32,
        rng: &mut SimRng,
    ) -> u32 {
        let d = self.devices.len() as u32;
        let app = match kind {
            DeviceKind::Phone => chance(rng, 0.7),
            DeviceKind::Tablet | DeviceKind::SharedTablet => chance(rng, 0.6),
            _ => false,
        };
        let ua = match kind {
            DeviceKind::Phone => agents::phone(rng, app),
            DeviceKind::Laptop | DeviceKind::Desktop => agents::computer(rng),
            _ => agents::tablet(app),
        };
        let text = if app {
            ids::uuid_v4(rng)
        } else {
            ids::cookie_id(rng)
        };
        let id = self.push_id(text, IdOwner::Device(d), IdOrigin::Original);
        let mut signed = None;
        let plans = users
            .into_iter()
            .map(|(person, signs)| {
                // Half the signing devices were signed in before the
                // scenario starts: their activity carries the account with
                // no login event in the file.
                let pre = signs && signed.is_none() && chance(rng, 0.5);
                // Most first sign-ins happen in the first week; some
                // devices are only signed into late in the scenario.
                let last = u64::from(days.saturating_sub(1));
                let first_day = if !signs || pre {
                    0
                } else if chance(rng, 0.75) {
                    between(rng, 0, last.min(6)) as u32
                } else {
                    between(rng, 0, last) as u32
                };
                if pre {
                    signed = self.persons.get(person as usize).and_then(|p| p.account);
                }
                SignPlan {
                    person,
                    signs,
                    first_day,
                    once: signs && chance(rng, 0.12),
                    logged_out: false,
                }
            })
            .collect();
        self.devices.push(Device {
            kind,
            app,
            ua,
            household: h,
            plans,
            ids: vec![IdSpan { from_ms: 0, id }],
            signed,
            state_id: id,
            v6: kind != DeviceKind::Desktop || chance(rng, 0.5),
            browser: None,
            is_phone_browser: false,
        });
        d
    }

    /// Adds a device id record and returns its index.
    pub(crate) fn push_id(&mut self, text: String, owner: IdOwner, origin: IdOrigin) -> u32 {
        let id = self.ids.len() as u32;
        self.ids.push(IdRecord {
            text,
            owner,
            signed_in: Vec::new(),
            events: 0,
            origin,
            erased_at: None,
        });
        id
    }

    fn build_offices(&mut self, rng: &mut SimRng) {
        let mut workers: Vec<u32> = (0..self.persons.len() as u32)
            .filter(|_| chance(rng, 0.5))
            .collect();
        workers.shuffle(rng);
        let small_share = workers.len() / 4;
        let mut at = 0usize;
        while at < workers.len() {
            let small = at < small_share;
            let size = if small {
                between(rng, 3, 8) as usize
            } else {
                let u: f64 = rand::Rng::random(rng);
                10 + (190.0 * u.powf(2.5)) as usize
            };
            let o = self.offices.len() as u32;
            // Small offices sit on ordinary broadband lines that look
            // exactly like homes; big ones on business ranges.
            let v4 = if small {
                net::residential_v4(rng)
            } else {
                net::business_v4(rng)
            };
            let end = (at + size).min(workers.len());
            for &p in workers.get(at..end).unwrap_or(&[]) {
                if let Some(person) = self.persons.get_mut(p as usize) {
                    person.office = Some(o);
                }
            }
            self.offices.push(Office { v4, small });
            at = end;
        }
    }

    fn build_networks(&mut self, people: u32, rng: &mut SimRng) {
        let phones = self
            .devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Phone)
            .count();
        let cafes = (people / 150).max(3);
        let airports = (people / 5000).max(1);
        for i in 0..cafes + airports {
            let v4 = if i < cafes && chance(rng, 0.4) {
                net::residential_v4(rng)
            } else {
                net::business_v4(rng)
            };
            self.venues.push(Venue { v4 });
        }
        for _ in 0..(phones / 60).max(2) {
            self.cgnat_pool.push(net::cgnat_v4(rng));
        }
        for _ in 0..(phones / 400).max(2) {
            self.carrier_pool.push(net::carrier_pool_v4(rng));
        }
    }

    fn build_bots(&mut self, rng: &mut SimRng) {
        let n = ((self.devices.len() as f64) * BOT_SHARE / (1.0 - BOT_SHARE))
            .round()
            .max(1.0) as usize;
        for b in 0..n {
            let text = if chance(rng, 0.7) {
                ids::cookie_id(rng)
            } else {
                ids::uuid_v4(rng)
            };
            let id = self.push_id(text, IdOwner::Bot(b as u32), IdOrigin::Original);
            let datacenter = chance(rng, 0.5);
            let victim =
                (!datacenter && chance(rng, 0.6)).then(|| index(rng, self.households.len()) as u32);
            let rate = 150.0 + f64::from(count(rng, 250.0)).min(1400.0);
            self.bots.push(Bot {
                id,
                datacenter,
                rate,
                victim,
                ua: agents::bot(rng),
            });
        }
    }

    fn plan_cookie_resets(&mut self, days: u32, rng: &mut SimRng) {
        let p = 1.0 - (1.0 - COOKIE_RESET_PER_DAY).powi(days as i32);
        for d in 0..self.devices.len() {
            let web = self.devices.get(d).is_some_and(|x| !x.app);
            if !web || !chance(rng, p) {
                continue;
            }
            let at = between(rng, DAY_MS / 2, u64::from(days) * DAY_MS - 1);
            let text = ids::cookie_id(rng);
            let id = self.push_id(text, IdOwner::Device(d as u32), IdOrigin::CookieReset);
            self.insert_span(d as u32, at, id);
        }
    }

    /// Makes device `d` switch to id `id` at `at` (keeps spans sorted).
    pub(crate) fn insert_span(&mut self, d: u32, at: u64, id: u32) {
        if let Some(dev) = self.devices.get_mut(d as usize) {
            let pos = dev.ids.partition_point(|s| s.from_ms <= at);
            dev.ids.insert(pos, IdSpan { from_ms: at, id });
        }
    }

    /// Start-of-day bookkeeping: dynamic homes get new addresses, and the
    /// ISP hands some released addresses to other homes.
    pub(crate) fn start_day(&mut self, day: u32, rng: &mut SimRng) {
        if day == 0 {
            return;
        }
        for h in 0..self.households.len() {
            let Some(hh) = self.households.get(h) else {
                continue;
            };
            if hh.dynamic_days <= 0.0 || !chance(rng, 1.0 / hh.dynamic_days) {
                continue;
            }
            let old = hh.v4;
            let new = if !self.released.is_empty() && chance(rng, 0.4) {
                let i = index(rng, self.released.len());
                self.released.swap_remove(i)
            } else {
                net::residential_v4(rng)
            };
            self.released.push(old);
            if let Some(hh) = self.households.get_mut(h) {
                hh.v4 = new;
            }
        }
        if self.released.len() > 50_000 {
            let excess = self.released.len() - 50_000;
            self.released.drain(..excess);
        }
    }
}
