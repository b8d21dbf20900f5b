//! Reads the Secrets a StreamJob names (source credentials, object-store credentials) through
//! the API. Only reads; values are never logged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::error::Error;

/// Something built from a Secret the spec names: ready, or not, because the Secret does not
/// exist. A missing Secret is for the user to create, so it is a status (or a message), not an
/// error to retry with backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved<T> {
    /// Built.
    Ready(T),
    /// The Secret does not exist; the message names it and the spec field that references it.
    MissingSecret {
        /// For a person.
        message: String,
    },
}

impl<T> Resolved<T> {
    /// `f` applied to a ready value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Resolved<U> {
        match self {
            Resolved::Ready(t) => Resolved::Ready(f(t)),
            Resolved::MissingSecret { message } => Resolved::MissingSecret { message },
        }
    }

    /// The ready value, or the message saying why there is none.
    pub fn ready(self) -> Result<T, String> {
        match self {
            Resolved::Ready(t) => Ok(t),
            Resolved::MissingSecret { message } => Err(message),
        }
    }
}

/// The keys and values of Secret `name` in `ns` (`data` decoded as UTF-8, then `stringData`),
/// or, when it does not exist, a message naming the spec `field` that references it.
pub async fn secret_values(
    client: &Client,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Resolved<BTreeMap<String, String>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| Error::ReadSecret {
            name: name.to_string(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(Resolved::MissingSecret {
            message: format!(
                "the credentials Secret {name} ({field}) does not exist in namespace {ns}"
            ),
        });
    };
    let mut values: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    values.extend(secret.string_data.unwrap_or_default());
    Ok(Resolved::Ready(values))
}
