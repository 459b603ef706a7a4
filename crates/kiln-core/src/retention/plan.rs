//! The retention planner and its invariants.
//!
//! For one ImageBuild, per region, newest first:
//! - images without kiln's owner tags for this build are not in the plan at all;
//! - the ImageBuild's latest image, images a child build was made from,
//!   images tagged `kiln.dev/keep` or with a protected tag, and pinned build
//!   or image IDs are kept;
//! - the newest `keepLast` are kept;
//! - images younger than `minAge`, or (when set) younger than `maxAge`, are kept;
//! - the rest are superseded: with `deleteAfter`, deleted that long after the
//!   next newer image appeared (deprecated after `deprecateAfter` meanwhile);
//!   without it, deleted now.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use jiff::Timestamp;

use crate::api::RetentionAction;

/// An image at the provider, as listed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageInfo {
    /// Region.
    pub region: String,
    /// The provider's image ID.
    pub image_id: String,
    /// Its name at the provider, where images have one.
    pub name: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// The owner kiln recorded on the image, as the provider decoded it from
    /// its own tags, labels or properties; `None` when kiln did not make it.
    pub owner: Option<ImageOwner>,
    /// A person marked the image to be kept (on AWS, the `kiln.dev/keep` tag).
    pub keep: bool,
    /// The image's tags (labels, metadata) as users see them, for
    /// `protect.tags`.
    pub tags: BTreeMap<String, String>,
    /// Already deprecated at the provider.
    pub deprecated: bool,
    /// Already obsolete at the provider (GCE's OBSOLETE: no new instances).
    pub obsolete: bool,
    /// When the image's life ends, as the provider records it (Azure's
    /// `endOfLifeDate`).
    pub end_of_life: Option<Timestamp>,
    /// The provider refuses to delete the image before `end_of_life` (Azure's
    /// `safetyProfile.blockDeletionBeforeEndOfLife`).
    pub delete_blocked: bool,
    /// What is deleted with the image (EBS snapshots, GCE disks), by ID.
    pub dependents: Vec<String>,
}

/// Who made an image, as kiln recorded it at the provider.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageOwner {
    /// Namespace of the ImageBuild.
    pub namespace: String,
    /// Name of the ImageBuild.
    pub image_build: String,
    /// The build that made the image.
    pub build_id: String,
}

impl ImageInfo {
    /// The build ID kiln recorded on it.
    pub fn build_id(&self) -> Option<&str> {
        self.owner
            .as_ref()
            .map(|o| o.build_id.as_str())
            .filter(|b| !b.is_empty())
    }
}

/// The policy, in plain types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Newest images kept per region.
    pub keep_last: usize,
    /// Superseded images younger than this are kept.
    pub max_age: Option<Duration>,
    /// Nothing younger than this is removed.
    pub min_age: Option<Duration>,
    /// Tags (key = value) that protect an image.
    pub protected_tags: BTreeMap<String, String>,
    /// Build IDs whose images are kept.
    pub pinned_builds: BTreeSet<String>,
    /// Image IDs that are kept.
    pub pinned_images: BTreeSet<String>,
    /// Deprecate this long after being superseded.
    pub deprecate_after: Option<Duration>,
    /// Mark obsolete (GCE) this long after being superseded.
    pub obsolete_after: Option<Duration>,
    /// Delete this long after being superseded; `None` deletes at once.
    pub delete_after: Option<Duration>,
}

/// Images that must stay whatever the rules say, with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    /// The ImageBuild's current images (status.latestImage), by image ID.
    pub latest: BTreeSet<String>,
    /// Images child builds were made from: image ID -> child name.
    pub in_use: BTreeMap<String, String>,
}

/// The decision for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVerdict {
    /// The image.
    pub image: ImageInfo,
    /// What to do.
    pub action: RetentionAction,
    /// Why, in words.
    pub reason: String,
    /// The newest image of the build in the region, which replaces this one
    /// (GCE's `replacement`); `None` for the newest itself.
    pub replacement: Option<String>,
    /// When a superseded image is to be deleted (`deleteAfter` after it was
    /// superseded): Azure's `endOfLifeDate`.
    pub delete_at: Option<Timestamp>,
}

/// Plans that the planner refuses to make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// keepLast 0 would allow deleting every image.
    #[error("keepLast must be at least 1: kiln never deletes every image of a build")]
    KeepLastZero,
    /// A defect elsewhere would have removed every image of a region.
    #[error("refusing a plan that removes every image of {build} in {region}")]
    WouldRemoveAll {
        /// namespace/name.
        build: String,
        /// Region.
        region: String,
    },
}

/// A duration the way people say it: `3d`, `5h`, `10m`, `42s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// How long ago `then` was (zero for the future).
pub fn age(now: Timestamp, then: Timestamp) -> Duration {
    now.duration_since(then)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Plans retention for the images of ImageBuild `namespace/name`.
///
/// Images that do not carry kiln's owner tags for exactly this build are left
/// out of the plan. The result is sorted by region, then newest first, and
/// does not depend on the order of `images`.
pub fn plan(
    namespace: &str,
    name: &str,
    images: &[ImageInfo],
    rules: &Rules,
    protection: &Protection,
    now: Timestamp,
) -> Result<Vec<ImageVerdict>, PlanError> {
    if rules.keep_last == 0 {
        return Err(PlanError::KeepLastZero);
    }
    let owned = |i: &&ImageInfo| {
        i.owner
            .as_ref()
            .is_some_and(|o| o.namespace == namespace && o.image_build == name)
    };
    let mut by_region: BTreeMap<&str, Vec<&ImageInfo>> = BTreeMap::new();
    for image in images.iter().filter(owned) {
        by_region
            .entry(image.region.as_str())
            .or_default()
            .push(image);
    }

    let mut out = Vec::new();
    for (region, mut list) in by_region {
        // Newest first; the image ID breaks ties so the plan is deterministic.
        list.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.image_id.cmp(&b.image_id))
                .then_with(|| a.cmp(b))
        });
        list.dedup_by(|a, b| a.image_id == b.image_id);
        let start = out.len();
        for (i, image) in list.iter().enumerate() {
            let newer = i.checked_sub(1).map(|newer| list[newer]);
            let (action, reason) = verdict(image, i, newer, rules, protection, now);
            out.push(ImageVerdict {
                image: (*image).clone(),
                action,
                reason,
                replacement: (i > 0).then(|| list[0].image_id.clone()),
                delete_at: newer
                    .zip(rules.delete_after)
                    .and_then(|(n, after)| n.created_at.checked_add(after).ok()),
            });
        }
        if out[start..]
            .iter()
            .all(|d| d.action != RetentionAction::Keep)
        {
            return Err(PlanError::WouldRemoveAll {
                build: format!("{namespace}/{name}"),
                region: region.to_owned(),
            });
        }
    }
    keep_what_another_region_keeps(&mut out);
    Ok(out)
}

/// One image can live in several regions under one ID (a DigitalOcean
/// snapshot), and deleting it deletes it everywhere. So an image is
/// deleted only if every region's verdict says so, and deprecated only if
/// none keeps it.
fn keep_what_another_region_keeps(verdicts: &mut [ImageVerdict]) {
    let strongest: BTreeMap<String, (RetentionAction, String)> =
        verdicts.iter().fold(BTreeMap::new(), |mut acc, v| {
            let rank = |a: RetentionAction| match a {
                RetentionAction::Keep => 0,
                RetentionAction::Deprecate => 1,
                RetentionAction::Obsolete => 2,
                RetentionAction::Delete => 3,
            };
            let entry = acc
                .entry(v.image.image_id.clone())
                .or_insert((v.action, v.image.region.clone()));
            if rank(v.action) < rank(entry.0) {
                *entry = (v.action, v.image.region.clone());
            }
            acc
        });
    for v in verdicts.iter_mut() {
        let Some((action, region)) = strongest.get(&v.image.image_id) else {
            continue;
        };
        if *action != v.action && region != &v.image.region {
            v.reason = format!(
                "{}: the same image is kept in {region} ({})",
                match action {
                    RetentionAction::Keep => "kept",
                    _ => "only deprecated",
                },
                v.reason
            );
            v.action = *action;
        }
    }
}

fn verdict(
    image: &ImageInfo,
    index: usize,
    newer: Option<&ImageInfo>,
    rules: &Rules,
    protection: &Protection,
    now: Timestamp,
) -> (RetentionAction, String) {
    use RetentionAction::{Delete, Deprecate, Keep, Obsolete};
    if protection.latest.contains(&image.image_id) {
        return (Keep, "latest image of the ImageBuild".into());
    }
    if let Some(child) = protection.in_use.get(&image.image_id) {
        return (Keep, format!("source image of ImageBuild {child}"));
    }
    if image.keep {
        return (Keep, "marked keep at the provider".into());
    }
    if let Some((k, v)) = rules
        .protected_tags
        .iter()
        .find(|(k, v)| image.tags.get(*k) == Some(*v))
    {
        return (Keep, format!("protected by tag {k}={v}"));
    }
    if image
        .build_id()
        .is_some_and(|b| rules.pinned_builds.contains(b))
    {
        return (Keep, "build ID pinned by the policy".into());
    }
    if rules.pinned_images.contains(&image.image_id) {
        return (Keep, "image ID pinned by the policy".into());
    }
    if index < rules.keep_last {
        return (
            Keep,
            format!("among the newest {} (keepLast)", rules.keep_last),
        );
    }
    let age = age(now, image.created_at);
    if let Some(min) = rules.min_age
        && age < min
    {
        return (Keep, format!("younger than minAge {}", human(min)));
    }
    if let Some(max) = rules.max_age
        && age <= max
    {
        return (Keep, format!("younger than maxAge {}", human(max)));
    }
    // Superseded since the next newer image appeared (there is one: index >= keepLast >= 1).
    let superseded_for = newer.map_or(age, |n| self::age(now, n.created_at));
    let superseded = format!(
        "superseded {} ago, beyond keepLast {}",
        human(superseded_for),
        rules.keep_last
    );
    let staged = |superseded: String| match (rules.obsolete_after, rules.deprecate_after) {
        (Some(obs), _) if superseded_for >= obs => (
            Obsolete,
            format!("{superseded}; obsolete after {}", human(obs)),
        ),
        (_, Some(dep)) if superseded_for >= dep => (
            Deprecate,
            format!("{superseded}; deprecated after {}", human(dep)),
        ),
        _ => (Keep, superseded),
    };
    match rules.delete_after {
        Some(after) if superseded_for < after => {
            let (action, reason) = staged(superseded);
            let sep = if action == Keep { ";" } else { "," };
            (
                action,
                format!("{reason}{sep} deleted after {}", human(after)),
            )
        }
        _ => match image
            .end_of_life
            .filter(|eol| image.delete_blocked && *eol > now)
        {
            // The provider would refuse the delete; kiln asks only when it can succeed.
            Some(eol) => {
                let (action, reason) = staged(superseded);
                (
                    action,
                    format!(
                        "{reason}; the provider blocks its deletion until its end of life {eol} (blockDeletionBeforeEndOfLife)"
                    ),
                )
            }
            None => (Delete, superseded),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NS: &str = "images";
    const NAME: &str = "base";

    fn image(region: &str, id: &str, minutes_ago: i64, owned: bool) -> ImageInfo {
        ImageInfo {
            region: region.into(),
            image_id: id.into(),
            name: None,
            created_at: now() - jiff::SignedDuration::from_mins(minutes_ago),
            owner: owned.then(|| ImageOwner {
                namespace: NS.into(),
                image_build: NAME.into(),
                build_id: format!("b-{id}"),
            }),
            keep: false,
            tags: BTreeMap::new(),
            deprecated: false,
            obsolete: false,
            end_of_life: None,
            delete_blocked: false,
            dependents: vec![],
        }
    }

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().expect("now")
    }

    fn rules(keep_last: usize) -> Rules {
        Rules {
            keep_last,
            ..Default::default()
        }
    }

    fn actions(plan: &[ImageVerdict]) -> Vec<(&str, RetentionAction)> {
        plan.iter()
            .map(|d| (d.image.image_id.as_str(), d.action))
            .collect()
    }

    #[test]
    fn keeps_the_newest_and_deletes_the_rest_per_region() {
        let images: Vec<ImageInfo> = (0..5)
            .map(|i| image("us-east-1", &format!("ami-{i}"), 10 * i, true))
            .collect();
        let p = plan(NS, NAME, &images, &rules(3), &Protection::default(), now()).expect("plan");
        use RetentionAction::*;
        assert_eq!(
            actions(&p),
            vec![
                ("ami-0", Keep),
                ("ami-1", Keep),
                ("ami-2", Keep),
                ("ami-3", Delete),
                ("ami-4", Delete)
            ]
        );
        assert!(p[3].reason.contains("beyond keepLast 3"), "{}", p[3].reason);
    }

    #[test]
    fn unowned_images_are_not_in_the_plan() {
        let mut images = vec![
            image("us-east-1", "ami-0", 0, true),
            image("us-east-1", "ami-x", 100, false),
        ];
        let mut other = image("us-east-1", "ami-y", 200, true);
        if let Some(o) = other.owner.as_mut() {
            o.image_build = "another-build".into();
        }
        images.push(other);
        let p = plan(NS, NAME, &images, &rules(1), &Protection::default(), now()).expect("plan");
        assert_eq!(actions(&p), vec![("ami-0", RetentionAction::Keep)]);
    }

    #[test]
    fn max_age_never_removes_the_latest() {
        let images = vec![
            image("r", "ami-new", 600, true),
            image("r", "ami-old", 900, true),
        ];
        let mut r = rules(1);
        r.max_age = Some(Duration::from_secs(60));
        let protection = Protection {
            latest: ["ami-new".to_owned()].into(),
            ..Default::default()
        };
        let p = plan(NS, NAME, &images, &r, &protection, now()).expect("plan");
        assert_eq!(
            actions(&p),
            vec![
                ("ami-new", RetentionAction::Keep),
                ("ami-old", RetentionAction::Delete)
            ]
        );
        // Within maxAge, superseded images stay.
        r.max_age = Some(Duration::from_secs(3600 * 24));
        let p = plan(NS, NAME, &images, &r, &protection, now()).expect("plan");
        assert!(p.iter().all(|d| d.action == RetentionAction::Keep));
    }

    #[test]
    fn staged_deprecation_then_deletion() {
        // ami-1 superseded 30 minutes ago (when ami-0 appeared), ami-2 90 minutes ago.
        let images = vec![
            image("r", "ami-0", 30, true),
            image("r", "ami-1", 90, true),
            image("r", "ami-2", 200, true),
            image("r", "ami-3", 300, true),
        ];
        let r = Rules {
            keep_last: 1,
            deprecate_after: Some(Duration::from_secs(20 * 60)),
            delete_after: Some(Duration::from_secs(100 * 60)),
            ..Default::default()
        };
        let p = plan(NS, NAME, &images, &r, &Protection::default(), now()).expect("plan");
        use RetentionAction::*;
        assert_eq!(
            actions(&p),
            vec![
                ("ami-0", Keep),
                ("ami-1", Deprecate),
                ("ami-2", Deprecate),
                ("ami-3", Delete)
            ]
        );
    }

    #[test]
    fn gce_stages_deprecated_then_obsolete_then_deleted_with_the_newest_as_replacement() {
        let images = vec![
            image("global", "img-0", 30, true),
            image("global", "img-1", 90, true),
            image("global", "img-2", 200, true),
            image("global", "img-3", 300, true),
        ];
        let r = Rules {
            keep_last: 1,
            deprecate_after: Some(Duration::from_secs(20 * 60)),
            obsolete_after: Some(Duration::from_secs(60 * 60)),
            delete_after: Some(Duration::from_secs(150 * 60)),
            ..Default::default()
        };
        let p = plan(NS, NAME, &images, &r, &Protection::default(), now()).expect("plan");
        use RetentionAction::*;
        // img-1 superseded 30 minutes ago, img-2 90, img-3 200.
        assert_eq!(
            actions(&p),
            vec![
                ("img-0", Keep),
                ("img-1", Deprecate),
                ("img-2", Obsolete),
                ("img-3", Delete)
            ]
        );
        assert_eq!(p[0].replacement, None);
        assert!(
            p[1..]
                .iter()
                .all(|v| v.replacement.as_deref() == Some("img-0"))
        );
        // Deleted deleteAfter after the next newer image appeared.
        assert_eq!(
            p[2].delete_at,
            Some(images[1].created_at + jiff::SignedDuration::from_mins(150))
        );
        assert!(
            p[2].reason.contains("obsolete after 1h, deleted after 2h"),
            "{}",
            p[2].reason
        );
    }

    #[test]
    fn an_image_blocked_from_deletion_is_kept_until_its_end_of_life_and_the_plan_says_so() {
        let mut blocked = image("westeurope", "v-2", 300, true);
        blocked.delete_blocked = true;
        blocked.end_of_life = Some(now() + jiff::SignedDuration::from_hours(24));
        let mut past = image("westeurope", "v-3", 400, true);
        past.delete_blocked = true;
        past.end_of_life = Some(now() - jiff::SignedDuration::from_hours(1));
        let images = vec![image("westeurope", "v-0", 10, true), blocked, past];
        let p = plan(NS, NAME, &images, &rules(1), &Protection::default(), now()).expect("plan");
        use RetentionAction::*;
        assert_eq!(
            actions(&p),
            vec![("v-0", Keep), ("v-2", Keep), ("v-3", Delete)]
        );
        assert!(
            p[1].reason
                .contains("blocks its deletion until its end of life 2026-11-23T12:00:00Z"),
            "{}",
            p[1].reason
        );
    }

    #[test]
    fn an_image_in_several_regions_goes_only_where_every_region_lets_it() {
        // One snapshot (same ID) in two regions; in ams3 a newer one has
        // not arrived yet, so there it is still among the newest two.
        let images = vec![
            image("nyc3", "s1", 30, true),
            image("nyc3", "s2", 20, true),
            image("nyc3", "s3", 10, true),
            image("ams3", "s1", 30, true),
            image("ams3", "s2", 20, true),
        ];
        let r = Rules {
            keep_last: 2,
            ..Default::default()
        };
        let p = plan(NS, NAME, &images, &r, &Protection::default(), now()).expect("plan");
        let s1: Vec<_> = p.iter().filter(|d| d.image.image_id == "s1").collect();
        assert_eq!(s1.len(), 2);
        for d in s1 {
            assert_eq!(d.action, RetentionAction::Keep, "{d:?}");
        }
        assert!(
            p.iter()
                .any(|d| d.image.region == "nyc3" && d.reason.contains("kept in ams3")),
            "{p:?}"
        );
    }

    #[test]
    fn protections_win() {
        let mut tagged = image("r", "ami-tag", 500, true);
        tagged.keep = true;
        let images = vec![
            image("r", "ami-0", 0, true),
            tagged,
            image("r", "ami-pin", 600, true),
            image("r", "ami-child", 700, true),
            image("r", "ami-gone", 800, true),
        ];
        let mut r = rules(1);
        r.pinned_builds.insert("b-ami-pin".into());
        let protection = Protection {
            in_use: [("ami-child".to_owned(), "server".to_owned())].into(),
            ..Default::default()
        };
        let p = plan(NS, NAME, &images, &r, &protection, now()).expect("plan");
        use RetentionAction::*;
        assert_eq!(
            actions(&p),
            vec![
                ("ami-0", Keep),
                ("ami-tag", Keep),
                ("ami-pin", Keep),
                ("ami-child", Keep),
                ("ami-gone", Delete)
            ]
        );
        assert!(p[3].reason.contains("source image of ImageBuild server"));
    }

    #[test]
    fn refuses_keep_last_zero() {
        assert_eq!(
            plan(NS, NAME, &[], &rules(0), &Protection::default(), now()),
            Err(PlanError::KeepLastZero)
        );
    }

    prop_compose! {
        fn arb_image()(region in 0..3u8, id in 0..40u16, minutes in 0..10_000i64, owned in prop::bool::weighted(0.8), keep in prop::bool::weighted(0.1), deprecated in any::<bool>(), end_of_life in prop::option::of(-5_000..5_000i64)) -> ImageInfo {
            let mut i = image(&format!("region-{region}"), &format!("ami-{id:04}"), minutes, owned);
            i.keep = keep;
            i.deprecated = deprecated;
            i.end_of_life = end_of_life.map(|m| now() + jiff::SignedDuration::from_mins(m));
            i.delete_blocked = end_of_life.is_some();
            i
        }
    }

    prop_compose! {
        fn arb_rules()(keep_last in 1..6usize, max_age in prop::option::of(0..20_000u64), min_age in prop::option::of(0..20_000u64),
                       stage in prop::option::of((0..5_000u64, 0..5_000u64)), pinned in prop::collection::btree_set(0..40u16, 0..4)) -> Rules {
            let (deprecate_after, delete_after) = match stage {
                Some((a, b)) => (Some(Duration::from_secs(a.min(b) * 60)), Some(Duration::from_secs(a.max(b) * 60 + 60))),
                None => (None, None),
            };
            Rules {
                keep_last,
                max_age: max_age.map(|m| Duration::from_secs(m * 60)),
                min_age: min_age.map(|m| Duration::from_secs(m * 60)),
                pinned_images: pinned.into_iter().map(|p| format!("ami-{p:04}")).collect(),
                deprecate_after,
                delete_after,
                ..Default::default()
            }
        }
    }

    proptest! {
        #[test]
        fn invariants(images in prop::collection::vec(arb_image(), 0..60), rules in arb_rules(), latest in prop::collection::btree_set(0..40u16, 0..3), used in prop::collection::btree_set(0..40u16, 0..3)) {
            let protection = Protection {
                latest: latest.iter().map(|p| format!("ami-{p:04}")).collect(),
                in_use: used.iter().map(|p| (format!("ami-{p:04}"), "child".to_owned())).collect(),
            };
            let p = plan(NS, NAME, &images, &rules, &protection, now()).expect("a valid policy always plans");

            // The same input gives the same plan, whatever its order.
            let mut reversed = images.clone();
            reversed.reverse();
            prop_assert_eq!(&p, &plan(NS, NAME, &reversed, &rules, &protection, now()).expect("plan"));

            let owned = |i: &ImageInfo| i.owner.as_ref().is_some_and(|o| o.namespace == NS && o.image_build == NAME);
            for d in &p {
                // Nothing without kiln's owner tags is in the plan.
                prop_assert!(owned(&d.image));
                if d.action != RetentionAction::Keep {
                    // Latest and in-use images are never touched, nor pinned or tagged ones.
                    prop_assert!(!protection.latest.contains(&d.image.image_id));
                    prop_assert!(!protection.in_use.contains_key(&d.image.image_id));
                    prop_assert!(!rules.pinned_images.contains(&d.image.image_id));
                    prop_assert!(!d.image.keep);
                }
                if d.action == RetentionAction::Delete
                    && let Some(min) = rules.min_age
                {
                    // Nothing younger than minAge is deleted.
                    prop_assert!(age(now(), d.image.created_at) >= min);
                }
                if d.action == RetentionAction::Delete && d.image.delete_blocked {
                    // Nothing the provider blocks is deleted before its end of life.
                    prop_assert!(d.image.end_of_life.is_some_and(|eol| eol <= now()));
                }
            }
            // Never fewer than keepLast remain per region.
            let regions: BTreeSet<&str> = p.iter().map(|d| d.image.region.as_str()).collect();
            for region in regions {
                let distinct: BTreeSet<&str> = images.iter().filter(|i| owned(i) && i.region == region).map(|i| i.image_id.as_str()).collect();
                let kept = p.iter().filter(|d| d.image.region == region && d.action == RetentionAction::Keep).count();
                prop_assert!(kept >= rules.keep_last.min(distinct.len()), "kept {} of {} with keepLast {}", kept, distinct.len(), rules.keep_last);
            }
        }
    }
}
