//! The command line: output and errors of `kiln validate`, `kiln images list`
//! and `kiln prune`.

mod support;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use kiln::{api::ImageBuild, provider::aws::tags};
use kube::{Api, api::PostParams};
use serde_json::json;
use support::*;

fn kiln(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kiln")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path.display().to_string()
}

#[test]
fn validate_accepts_the_samples_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/imagebuild-aws.yaml");
    let out = kiln(&["validate", samples.to_str().expect("path")], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ImageBuild/base-ami: valid"), "{stdout}");

    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: kiln.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: x}\nspec:\n  provider: {type: vultr, regions: [ams]}\n  template: {inline: x}\n---\n\
         apiVersion: kiln.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec: {builds: {names: [a]}, keepLast: 0}\n",
    );
    let unparsable = write(
        dir.path(),
        "template.yaml",
        "apiVersion: kiln.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: t}\nspec:\n  provider: {type: aws, regions: [us-east-1]}\n  template: {inline: 'source \"amazon-ebs\" \"x\" { region = '}\n",
    );
    let missing = dir.path().join("missing.yaml").display().to_string();
    let out = kiln(&["validate", &bad, &unparsable, &missing], &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("ImageBuild/x: invalid")
            && stdout.contains("spec.provider.type: Unsupported value: \"vultr\""),
        "unknown provider:\n{stdout}"
    );
    assert!(
        stdout.contains("ImagePolicy/p: invalid") && stdout.contains("spec.keepLast"),
        "invalid manifest:\n{stdout}"
    );
    assert!(
        stdout.contains("ImageBuild/t: invalid")
            && stdout.contains("packer validate failed")
            && stdout.contains("Invalid expression"),
        "template:\n{stdout}"
    );
    assert!(
        stdout.contains("missing.yaml: cannot read"),
        "missing file:\n{stdout}"
    );

    let out = kiln(&["validate"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("Usage"), "no files is a usage error");
}

async fn seed(env: &Env, ns: &str, name: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let build_id = format!("b{i}");
        let owner = [
            (tags::NAMESPACE, ns),
            (tags::IMAGE_BUILD, name),
            (tags::BUILD_ID, build_id.as_str()),
        ];
        ids.push(make_ami(&env.ec2(), "us-east-1", &format!("{name}-{i}"), &owner).await);
        // Distinct creation times (moto keeps whole seconds).
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    ids
}

#[tokio::test]
async fn images_list_and_prune_work_against_the_provider() {
    let env = Env::start(false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = seed(&env, "default", "web", 4).await;
    let manifest = write(
        dir.path(),
        "web.yaml",
        &format!(
            "apiVersion: kiln.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: web, namespace: default}}\nspec:\n  provider: {{type: aws, regions: [us-east-1], endpoint: '{}'}}\n  template: {{inline: x}}\n",
            env.moto.endpoint()
        ),
    );
    let creds = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];

    // images list from a manifest: newest first.
    let out = kiln(&["images", "list", "--file", &manifest], &creds);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let listed: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first, "{stdout}");
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|h| h.contains("REGION") && h.contains("BUILD-ID") && h.contains("AGE"))
    );

    // An unreachable endpoint is a clear error.
    let unreachable = write(
        dir.path(),
        "down.yaml",
        &std::fs::read_to_string(&manifest)
            .expect("read")
            .replace(env.moto.endpoint(), "http://127.0.0.1:9"),
    );
    let out = kiln(&["images", "list", "--file", &unreachable], &creds);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("cannot reach the EC2 endpoint"),
        "{}",
        text(&out).1
    );

    // prune reads the ImageBuild and its Secret from the cluster.
    env.aws_secret("default", "aws", &creds).await;
    let mut ib = image_build("web", env.moto.endpoint(), &["us-east-1"], json!({}));
    ib.metadata.namespace = Some("default".into());
    Api::<ImageBuild>::namespaced(env.client.clone(), "default")
        .create(&PostParams::default(), &ib)
        .await
        .expect("create");
    let kubeconfig = env.plane.admin_kubeconfig_path().display().to_string();
    let with_cluster = [creds[0], creds[1], ("KUBECONFIG", kubeconfig.as_str())];
    let policy = write(
        dir.path(),
        "policy.yaml",
        "apiVersion: kiln.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec: {builds: {names: [web]}, keepLast: 2}\n",
    );

    let out = kiln(&["prune", "--policy", &policy, "--dry-run"], &with_cluster);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("plan: 2 to deprecate or delete, 2 kept"),
        "{stdout}"
    );
    for old in &ids[..2] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(old.as_str()) && l.contains("delete")),
            "{old} planned:\n{stdout}"
        );
    }
    assert_eq!(
        env.ec2()
            .list_region("us-east-1", "default", "web")
            .await
            .expect("list")
            .len(),
        4,
        "a dry run changes nothing"
    );

    // Without a terminal and without --yes, nothing is deleted.
    let out = kiln(&["prune", "--policy", &policy], &with_cluster);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--yes"), "{}", text(&out).1);
    assert_eq!(
        env.ec2()
            .list_region("us-east-1", "default", "web")
            .await
            .expect("list")
            .len(),
        4
    );

    let out = kiln(&["prune", "--policy", &policy, "--yes"], &with_cluster);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let left: Vec<String> = env
        .ec2()
        .list_region("us-east-1", "default", "web")
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.image_id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(
        left.contains(&ids[2]) && left.contains(&ids[3]),
        "the newest two remain: {left:?}"
    );

    // A policy file that is not valid never reaches the cluster.
    let bad = write(
        dir.path(),
        "bad-policy.yaml",
        "apiVersion: kiln.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec: {builds: {names: [web]}, keepLast: 0}\n",
    );
    let out = kiln(&["prune", "--policy", &bad, "--dry-run"], &with_cluster);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("spec.keepLast must be between 1 and 1000"),
        "{}",
        text(&out).1
    );
}
