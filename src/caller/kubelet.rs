//! The node's kubelet, asked which pod a caller runs in.
//!
//! The kubelet's `GET /pods` lists every pod on its node (a `PodList`, as the API server would
//! write it). The list is cached; it is fetched again when a caller's pod UID (or container ID) is
//! not in it, since a pod can call before the cache knows it, but at most once per
//! [`MIN_REFETCH`], so callers in unknown pods cannot make the agent hammer the kubelet; and when
//! it is older than [`MAX_AGE`], so label changes are seen. One fetch runs at a time; callers that
//! arrive meanwhile wait for it and use its answer.
//!
//! The agent authenticates with the bearer token in `token_file`, read again at every fetch
//! (projected service-account tokens rotate), over HTTPS trusting `ca_file`. A pod the kubelet
//! does not list is never guessed: the caller gets [`PodSeen::Unknown`] with the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::pod::{Pod, PodFacts, PodSeen};
use crate::config::KubernetesSettings;

/// The least time between two fetches of the pod list.
pub const MIN_REFETCH: Duration = Duration::from_secs(1);
/// A pod list older than this is fetched again at the next lookup.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// The largest pod list read (a full node's is a few MiB).
const MAX_BODY: usize = 64 << 20;

/// Why the pod list could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    /// The HTTPS client could not be made (for example an unreadable `ca_file`).
    #[error("cannot set up the kubelet client: {0}")]
    Setup(String),
    /// The agent's token could not be read.
    #[error("cannot read the agent's service-account token: {0}")]
    Token(#[from] crate::secrets::SecretFileError),
    /// The kubelet could not be reached or did not answer in time.
    #[error("cannot reach the kubelet at {url}: {error}")]
    Unreachable { url: String, error: String },
    /// The kubelet did not accept the agent's token.
    #[error(
        "the kubelet at {url} answered 401: it does not accept the agent's token in token_file (expired, not a service-account token, or the kubelet's webhook authentication is off)"
    )]
    Unauthenticated { url: String },
    /// The kubelet refused the agent's request: a missing permission.
    #[error(
        "the kubelet at {url} answered {status}: the agent's service account needs \"get\" on nodes/pods (nodes/proxy before Kubernetes 1.33); see deploy/kubernetes/rbac.yaml"
    )]
    Forbidden { url: String, status: u16 },
    /// The kubelet answered with another status.
    #[error("the kubelet at {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    /// The answer is not a pod list.
    #[error("the kubelet at {url} answered with something that is not a PodList: {error}")]
    Malformed { url: String, error: String },
}

/// Why the HTTPS client for the kubelet could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct SetupError(String);

/// Why a caller's pod was not found.
#[derive(Debug, thiserror::Error)]
enum NotFound {
    /// The kubelet's current list does not have it.
    #[error("the kubelet does not list pod {uid}{node}")]
    NotListed { uid: String, node: String },
    /// The list could not be fetched (and the pod was never seen).
    #[error("{0}")]
    Kubelet(String),
}

/// The node's kubelet and its cached pod list.
pub struct Kubelet {
    settings: KubernetesSettings,
    /// The HTTPS client, or why it could not be made.
    http: Result<reqwest::Client, SetupError>,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    pods: HashMap<String, Arc<ListedPod>>,
    /// When the last fetch was attempted, and its error if it failed.
    fetched: Option<(Instant, Option<String>)>,
}

/// A pod of the list, with its containers by ID.
#[derive(Debug)]
struct ListedPod {
    namespace: String,
    name: String,
    service_account: Option<String>,
    labels: BTreeMap<String, String>,
    /// Container ID (without the `containerd://` scheme) → (name, image).
    containers: HashMap<String, (String, String)>,
}

impl Kubelet {
    /// A client for the kubelet of `settings`; requests time out after `timeout`. A client that
    /// cannot be made (an unreadable `ca_file`) makes every lookup fail with the reason.
    pub fn new(settings: KubernetesSettings, timeout: Duration) -> Kubelet {
        let http =
            crate::upstream::http_client(settings.ca_file.as_deref(), timeout).map_err(|e| SetupError(e.to_string()));
        if let Err(e) = &http {
            tracing::error!(error = %e, "cannot set up the kubelet client; callers in pods will be refused");
        }
        Kubelet {
            settings,
            http,
            cache: Default::default(),
        }
    }

    /// The settings this client was made for.
    pub fn settings(&self) -> &KubernetesSettings {
        &self.settings
    }

    /// Looks up the pod of `pod` (UID and container ID from a caller's cgroup) at the kubelet.
    pub async fn resolve(&self, pod: &Pod) -> Pod {
        let seen = match self.lookup(&pod.uid, pod.container_id.as_deref()).await {
            Ok(facts) => PodSeen::Known(facts),
            Err(why) => PodSeen::Unknown(why.to_string()),
        };
        Pod {
            uid: pod.uid.clone(),
            container_id: pod.container_id.clone(),
            seen,
        }
    }

    async fn lookup(&self, uid: &str, container_id: Option<&str>) -> Result<PodFacts, NotFound> {
        let mut cache = self.cache.lock().await;
        let listed = |cache: &Cache| cache.pods.get(uid).cloned();
        let complete = |p: &ListedPod| container_id.is_none_or(|id| p.containers.contains_key(id));
        let age = cache.fetched.as_ref().map(|(at, _)| at.elapsed());
        let stale = age.is_none_or(|a| a >= MAX_AGE);
        let missing = listed(&cache).is_none_or(|p| !complete(&p));
        if (stale || missing) && age.is_none_or(|a| a >= MIN_REFETCH) {
            let result = self.fetch().await;
            let error = match result {
                Ok(pods) => {
                    cache.pods = pods;
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch the pod list from the kubelet");
                    Some(e.to_string())
                }
            };
            cache.fetched = Some((Instant::now(), error));
        }
        match listed(&cache) {
            // After a failed fetch, the pod as last listed (a pod's namespace, name and service
            // account never change; its labels may be a little behind).
            Some(p) => Ok(facts(&p, container_id)),
            None => Err(match &cache.fetched {
                Some((_, Some(error))) => NotFound::Kubelet(error.clone()),
                _ => NotFound::NotListed {
                    uid: uid.to_string(),
                    node: self
                        .settings
                        .node_name
                        .as_ref()
                        .map_or(String::new(), |n| format!(" on node {n}")),
                },
            }),
        }
    }

    /// Fetches the pod list.
    async fn fetch(&self) -> Result<HashMap<String, Arc<ListedPod>>, KubeletError> {
        let http = self.http.as_ref().map_err(|e| KubeletError::Setup(e.0.clone()))?;
        let token = self.settings.token_file.read()?;
        let url = format!("{}/pods", self.settings.kubelet_url);
        let unreachable = |e: reqwest::Error| KubeletError::Unreachable {
            url: url.clone(),
            error: crate::upstream::error_chain(&e),
        };
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
            .map_err(|_| KubeletError::Setup("the service-account token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let resp = http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(unreachable)?;
        match status {
            200 => {}
            401 => return Err(KubeletError::Unauthenticated { url }),
            403 => return Err(KubeletError::Forbidden { url, status }),
            _ => {
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                return Err(KubeletError::Status {
                    url,
                    status,
                    body: text,
                });
            }
        }
        if body.len() > MAX_BODY {
            return Err(KubeletError::Malformed {
                url,
                error: format!("{} bytes, more than the {MAX_BODY} read", body.len()),
            });
        }
        let list: PodList = serde_json::from_slice(&body).map_err(|e| KubeletError::Malformed {
            url: url.clone(),
            error: e.to_string(),
        })?;
        Ok(pods_of(list, self.settings.node_name.as_deref()))
    }
}

/// The facts of a listed pod for the caller's container.
fn facts(p: &ListedPod, container_id: Option<&str>) -> PodFacts {
    let container = container_id.and_then(|id| p.containers.get(id));
    PodFacts {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        service_account: p.service_account.clone(),
        labels: p.labels.clone(),
        container: container.map(|(name, _)| name.clone()),
        image: container.map(|(_, image)| image.clone()),
    }
}

/// The pods of a list by UID, keeping only those of `node` when it is given.
fn pods_of(list: PodList, node: Option<&str>) -> HashMap<String, Arc<ListedPod>> {
    let mut out = HashMap::new();
    for item in list.items {
        if node.is_some_and(|n| item.spec.node_name.as_deref() != Some(n)) {
            continue;
        }
        let status = item.status.unwrap_or_default();
        let containers = status
            .container_statuses
            .into_iter()
            .chain(status.init_container_statuses)
            .chain(status.ephemeral_container_statuses)
            .filter_map(|c| {
                // "containerd://<id>", "cri-o://<id>", "docker://<id>".
                let id = c.container_id?.rsplit_once("://")?.1.to_ascii_lowercase();
                Some((id, (c.name, c.image)))
            })
            .collect();
        out.insert(
            item.metadata.uid.to_ascii_lowercase(),
            Arc::new(ListedPod {
                namespace: item.metadata.namespace,
                name: item.metadata.name,
                service_account: item.spec.service_account_name.filter(|s| !s.is_empty()),
                labels: item.metadata.labels,
                containers,
            }),
        );
    }
    out
}

/// The kubelet's `/pods` answer: a `v1.PodList`, of which only what attestation needs is read.
#[derive(Debug, Deserialize)]
pub struct PodList {
    #[serde(default)]
    items: Vec<ListItem>,
}

#[derive(Debug, Deserialize)]
struct ListItem {
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    status: Option<Status>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
    namespace: String,
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    node_name: Option<String>,
    service_account_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(default)]
    image: String,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
      {"metadata":{"name":"api-7d9f","namespace":"payments","uid":"6F1C2F0A-3B1E-4C7E-9A51-0D2B8C7E4F10","labels":{"app":"payments"}},
       "spec":{"nodeName":"node-1","serviceAccountName":"api","containers":[{"name":"api","image":"x"}]},
       "status":{"phase":"Running","containerStatuses":[{"name":"api","image":"registry.example/api:1.2","containerID":"containerd://AB12"}],
                 "initContainerStatuses":[{"name":"init","image":"busybox","containerID":"containerd://cd34"}]}},
      {"metadata":{"name":"etcd-node-1","namespace":"kube-system","uid":"8e2f9c3a1b7d4e6f0a9b8c7d6e5f4a3b"},
       "spec":{"nodeName":"node-1"},"status":{"phase":"Pending"}},
      {"metadata":{"name":"elsewhere","namespace":"payments","uid":"00000000-0000-0000-0000-000000000001"},
       "spec":{"nodeName":"node-2","serviceAccountName":"api"}}
    ]}"#;

    #[test]
    fn a_pod_list_gives_namespace_service_account_labels_and_containers_of_this_node() {
        let list: PodList = serde_json::from_str(LIST).unwrap();
        let pods = pods_of(list, Some("node-1"));
        assert_eq!(pods.len(), 2, "the pod of node-2 does not count");
        let api = &pods["6f1c2f0a-3b1e-4c7e-9a51-0d2b8c7e4f10"];
        let f = facts(api, Some("ab12"));
        assert_eq!((f.namespace.as_str(), f.name.as_str()), ("payments", "api-7d9f"));
        assert_eq!(f.service_account.as_deref(), Some("api"));
        assert_eq!(f.labels["app"], "payments");
        assert_eq!(f.container.as_deref(), Some("api"));
        assert_eq!(f.image.as_deref(), Some("registry.example/api:1.2"));
        assert_eq!(facts(api, Some("cd34")).container.as_deref(), Some("init"));
        assert_eq!(
            facts(api, Some("ffff")).container,
            None,
            "an unlisted container is not guessed"
        );
        let etcd = facts(&pods["8e2f9c3a1b7d4e6f0a9b8c7d6e5f4a3b"], None);
        assert_eq!(etcd.service_account, None, "a static pod has no service account");
        let all: PodList = serde_json::from_str(LIST).unwrap();
        assert_eq!(pods_of(all, None).len(), 3);
    }

    #[test]
    fn a_pod_serializes_as_seen() {
        let list: PodList = serde_json::from_str(LIST).unwrap();
        let pods = pods_of(list, None);
        let uid = "6f1c2f0a-3b1e-4c7e-9a51-0d2b8c7e4f10".to_string();
        let pod = Pod {
            uid: uid.clone(),
            container_id: Some("ab12".into()),
            seen: PodSeen::Known(facts(&pods[&uid], Some("ab12"))),
        };
        assert_eq!(
            serde_json::to_value(&pod).unwrap(),
            serde_json::json!({"namespace":"payments","name":"api-7d9f","uid":uid,"service_account":"api",
                "labels":{"app":"payments"},"container":"api","image":"registry.example/api:1.2","container_id":"ab12"})
        );
        assert_eq!(
            pod.describe(),
            format!("pod payments/api-7d9f (uid {uid}, service account payments/api, container api)")
        );
        let unknown = Pod {
            seen: PodSeen::Unknown("the kubelet does not list pod x".into()),
            ..pod
        };
        assert_eq!(
            serde_json::to_value(&unknown).unwrap(),
            serde_json::json!({"uid":uid,"unknown":"the kubelet does not list pod x","container_id":"ab12"})
        );
        assert!(
            unknown
                .describe()
                .contains("not found: the kubelet does not list pod x")
        );
    }
}
