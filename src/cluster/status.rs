//! `coi-proxy cluster status`: the live instances and the accounts each owns, read from etcd
//! with the configuration's `[cluster]` (no daemon needed).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::GetOptions;

use super::keys;
use crate::config::Config;
use crate::context::ClusterError;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the configuration has no [cluster] section: this instance runs alone")]
    NoCluster,
    #[error("cannot read the cluster from etcd ({endpoints}): {cause}")]
    Unreachable { endpoints: String, cause: ClusterError },
}

/// The report: one line per member with its accounts, then accounts owned by no live member.
pub async fn status(config: &Config) -> Result<String, StatusError> {
    let cluster = config.cluster.as_ref().ok_or(StatusError::NoCluster)?;
    let unreachable = |cause| StatusError::Unreachable { endpoints: cluster.etcd.join(", "), cause };
    let read = async {
        let mut client = super::client(cluster).await?;
        let members =
            client.get(keys::MEMBERS, Some(GetOptions::new().with_prefix())).await.map_err(super::etcd_error)?;
        let owners =
            client.get(keys::OWNERS, Some(GetOptions::new().with_prefix())).await.map_err(super::etcd_error)?;
        let members: Vec<String> = members
            .kvs()
            .iter()
            .filter_map(|kv| std::str::from_utf8(kv.key()).ok()?.strip_prefix(keys::MEMBERS).map(str::to_string))
            .collect();
        let owners: Vec<(String, String)> = owners
            .kvs()
            .iter()
            .filter_map(|kv| Some((keys::owner_login(kv.key())?, String::from_utf8_lossy(kv.value()).into_owned())))
            .collect();
        Ok::<_, ClusterError>((members, owners))
    };
    let (members, owners) = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| unreachable(ClusterError::Etcd("no answer within 10 s".into())))?
        .map_err(unreachable)?;
    Ok(report(&cluster.node, &members, &owners))
}

/// Sans-I/O: the text for `members` and (account, owner node) pairs.
fn report(this: &str, members: &[String], owners: &[(String, String)]) -> String {
    let mut by_node: BTreeMap<&str, Vec<&str>> = members.iter().map(|m| (m.as_str(), Vec::new())).collect();
    let mut orphans = Vec::new();
    for (login, node) in owners {
        match by_node.get_mut(node.as_str()) {
            Some(accounts) => accounts.push(login),
            None => orphans.push(format!("{login} (owner {node} is not a member)")),
        }
    }
    let mut out = format!("members: {}\n", by_node.len());
    for (node, accounts) in &by_node {
        let me = if *node == this { " (this configuration)" } else { "" };
        out.push_str(&format!("{node}{me}: {} account(s)", accounts.len()));
        for login in accounts {
            out.push_str(&format!("\n  {login}"));
        }
        out.push('\n');
    }
    for orphan in orphans {
        out.push_str(&format!("unowned: {orphan}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn report() {
        let members = vec!["a".to_string(), "b".to_string()];
        let owners = vec![("x@y".to_string(), "a".to_string()), ("z@y".to_string(), "c".to_string())];
        let text = super::report("b", &members, &owners);
        assert_eq!(
            text,
            "members: 2\na: 1 account(s)\n  x@y\nb (this configuration): 0 account(s)\nunowned: z@y (owner c is not a member)\n"
        );
    }
}
