//! What Packer announces it creates in the cloud, read from its
//! machine-readable `ui` lines. Packer's builders tag nothing temporary with
//! anything kiln could pass in (the key pair and security group cannot be
//! tagged at all by the amazon builder), but each says what it makes as it
//! makes it; the runner keeps those names so a sweep can find what an
//! unclean end left.

use kiln_core::image_build::run::Created;

use super::machine_readable::parse_line;

/// The messages of the amazon builders (EBS, instance-store, chroot) that
/// name what they create, and where the name goes.
const ANNOUNCEMENTS: &[(&str, Kind)] = &[
    ("Creating temporary keypair: ", Kind::KeyPair),
    (
        "Creating temporary security group for this instance: ",
        Kind::SecurityGroup,
    ),
    ("Instance ID: ", Kind::Instance),
    ("Creating AMI ", Kind::Image),
    ("Creating unencrypted AMI ", Kind::Image),
];

#[derive(Clone, Copy)]
enum Kind {
    KeyPair,
    SecurityGroup,
    Instance,
    Image,
}

/// Adds what `output` announces to `created`.
pub fn collect(output: &str, created: &mut Created) {
    for line in output.lines().filter_map(parse_line) {
        if line.kind != "ui" {
            continue;
        }
        let Some(text) = line.data.get(1) else {
            continue;
        };
        // "==> amazon-ebs.app: Instance ID: i-0123", or indented with spaces.
        let text = text
            .trim()
            .trim_start_matches("==>")
            .trim_start()
            .split_once(": ")
            .map_or(text.as_str(), |(_, rest)| rest);
        for (prefix, kind) in ANNOUNCEMENTS {
            let Some(rest) = text.strip_prefix(prefix) else {
                continue;
            };
            // "Creating AMI <name> from instance <id>": AMI names have no
            // spaces (EC2 allows them, but Packer templates rarely use them;
            // the part before " from instance " is taken either way).
            let name = match kind {
                Kind::Image => rest.rsplit_once(" from instance ").map_or(rest, |(n, _)| n),
                _ => rest,
            }
            .trim();
            if name.is_empty() {
                continue;
            }
            let list = match kind {
                Kind::KeyPair => &mut created.key_pairs,
                Kind::SecurityGroup => &mut created.security_groups,
                Kind::Instance => &mut created.instances,
                Kind::Image => &mut created.images,
            };
            if !list.iter().any(|n| n == name) {
                list.push(name.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_amazon_builder_announces() {
        let out = "\
1700000000,,ui,say,==> amazon-ebs.app: Creating temporary keypair: packer_6571e3c0-1b2c
1700000000,,ui,say,==> amazon-ebs.app: Creating temporary security group for this instance: packer_6571e3c1-aa
1700000001,,ui,message,    amazon-ebs.app: Instance ID: i-0abc123
1700000001,,ui,say,==> amazon-ebs.app: Creating AMI app-plain-b1 from instance i-0abc123
1700000001,,ui,message,    amazon-ebs.app: AMI: ami-0123
1700000002,,ui,say,==> amazon-ebs.app: Creating AMI app-plain-b1 from instance i-0abc123
1700000002,amazon-ebs.app,artifact,0,id,us-east-1:ami-0123
";
        let mut created = Created::default();
        collect(out, &mut created);
        assert_eq!(created.key_pairs, ["packer_6571e3c0-1b2c"]);
        assert_eq!(created.security_groups, ["packer_6571e3c1-aa"]);
        assert_eq!(created.instances, ["i-0abc123"]);
        assert_eq!(created.images, ["app-plain-b1"]);
    }

    #[test]
    fn other_lines_announce_nothing() {
        let mut created = Created::default();
        collect(
            "1700000000,,ui,say,==> amazon-ebs.app: Provisioning with shell script\nnot machine readable\n",
            &mut created,
        );
        assert!(created.is_empty());
    }
}
