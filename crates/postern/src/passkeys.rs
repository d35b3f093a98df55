//! Passkeys (WebAuthn) as a second factor beside TOTP, over the `webauthn_rp` crate (MIT/Apache,
//! RustCrypto, no unsafe; `webauthn-rs` is MPL-2.0 and pins a conflicting `rsa`): the relying
//! party's ceremonies, their short-lived state, and the credentials in the store.
//!
//! A ceremony's server state (challenge, expiry) is kept in memory for its few minutes, in the
//! library's fixed-capacity sets, and taken out (so used once) by the challenge the browser
//! signed. The relying party id is `[web] passkey_rp_id` (the server's host name by default);
//! the browser's origin must be `https://` that host, on any port. User verification (a PIN or
//! a biometric on the authenticator) is required, so a passkey is a factor of its own.

use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use postern_store::passkeys::Passkey;
use postern_store::Store;
use webauthn_rp::bin::{Decode, Encode};
use webauthn_rp::request::auth::AuthenticationVerificationOptions;
use webauthn_rp::request::register::{
    CredProtect, PublicKeyCredentialUserEntity, RegistrationVerificationOptions, UserHandle64,
    Username, USER_HANDLE_MAX_LEN,
};
use webauthn_rp::request::{
    AsciiDomain, DomainOrigin, ExtensionInfo, FixedCapHashSet, InsertResult, RpId,
};
use webauthn_rp::response::register::{DynamicState, StaticState};
use webauthn_rp::response::CredentialId;
use webauthn_rp::{
    AuthenticatedCredential, DiscoverableAuthentication64, DiscoverableAuthenticationServerState,
    DiscoverableCredentialRequestOptions, PublicKeyCredentialCreationOptions, Registration,
    RegistrationServerState,
};

/// Ceremonies in flight at once (each lives 5 minutes at most); more are refused until some end.
const IN_FLIGHT: usize = 1024;

fn handle_of(stored: &[u8]) -> Option<UserHandle64> {
    let bytes = <[u8; USER_HANDLE_MAX_LEN]>::try_from(stored).ok()?;
    UserHandle64::decode(bytes).ok()
}

pub struct Passkeys {
    rp_id: RpId,
    host: String,
    registrations: Mutex<FixedCapHashSet<RegistrationServerState<USER_HANDLE_MAX_LEN>>>,
    authentications: Mutex<FixedCapHashSet<DiscoverableAuthenticationServerState>>,
}

impl Passkeys {
    pub fn new(rp_id: &str) -> Result<Passkeys> {
        let host = rp_id.trim_end_matches('.').to_ascii_lowercase();
        let domain = AsciiDomain::try_from(host.clone())
            .map_err(|_| anyhow!("[web] passkey_rp_id {rp_id:?} is not a domain name"))?;
        Ok(Passkeys {
            rp_id: RpId::Domain(domain),
            host,
            registrations: Mutex::new(FixedCapHashSet::new(IN_FLIGHT)),
            authentications: Mutex::new(FixedCapHashSet::new(IN_FLIGHT)),
        })
    }

    fn origins(&self) -> [DomainOrigin<'_, '_>; 1] {
        [DomainOrigin::new_ignore_port(&self.host)]
    }

    /// Starts registering a passkey for `owner` (named `user_name` on the authenticator): the
    /// options for `navigator.credentials.create` (JSON).
    pub async fn begin_registration(
        &self,
        store: &Store,
        owner: &str,
        user_name: &str,
    ) -> Result<serde_json::Value> {
        let fresh = UserHandle64::new();
        let fresh = fresh.encode().map_err(|_| anyhow!("user handle"))?;
        let stored = store.passkey_user_handle(owner, fresh.as_ref()).await?;
        let handle = handle_of(&stored).ok_or_else(|| anyhow!("stored user handle"))?;
        let name = Username::try_from(user_name).map_err(|_| anyhow!("user name"))?;
        let user = PublicKeyCredentialUserEntity {
            name,
            id: &handle,
            display_name: None,
        };
        let mut options =
            PublicKeyCredentialCreationOptions::passkey(&self.rp_id, user, Vec::new());
        // credProtect asked for but not enforced: an authenticator without it (many platform
        // ones, Chromium's virtual one) would fail the whole ceremony; user verification is
        // required at every sign-in regardless
        options.extensions.cred_protect =
            CredProtect::UserVerificationRequired(ExtensionInfo::AllowDontEnforceValue);
        let (server, client) = options
            .start_ceremony()
            .map_err(|e| anyhow!("passkey options: {e}"))?;
        let json = serde_json::to_value(&client).context("passkey options")?;
        let mut set = self.registrations.lock().map_err(|_| anyhow!("poisoned"))?;
        if !matches!(
            set.insert_or_replace_all_expired(server),
            InsertResult::Success
        ) {
            bail!("too many passkey registrations in progress; try again in a few minutes");
        }
        Ok(json)
    }

    /// Finishes a registration with the browser's answer (`PublicKeyCredential.toJSON()`), for
    /// `owner` only (the user handle must be its own), and stores the passkey as `name`.
    pub async fn finish_registration(
        &self,
        store: &Store,
        owner: &str,
        name: &str,
        answer: &[u8],
    ) -> Result<()> {
        let reg = Registration::from_json_relaxed(answer).map_err(|_| anyhow!("not a passkey"))?;
        let challenge = reg
            .challenge_relaxed()
            .map_err(|_| anyhow!("not a passkey"))?;
        let server = self
            .registrations
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .take(&challenge)
            .ok_or_else(|| anyhow!("this passkey registration has expired; start again"))?;
        let origins = self.origins();
        let options = RegistrationVerificationOptions::<DomainOrigin<'_, '_>, DomainOrigin<'_, '_>> {
            allowed_origins: &origins,
            ..RegistrationVerificationOptions::default()
        };
        let cred = server
            .verify(&self.rp_id, &reg, &options)
            .map_err(|e| anyhow!("the passkey was not accepted: {e}"))?;
        let stored = store.passkey_user_handle(owner, &[]).await?;
        if cred.user_id().as_ref() != stored.as_slice() {
            bail!("the passkey was made for another account");
        }
        let static_state = cred
            .static_state()
            .encode()
            .map_err(|_| anyhow!("passkey key"))?;
        let dynamic_state = cred
            .dynamic_state()
            .encode()
            .map_err(|_| anyhow!("passkey state"))?;
        store
            .add_passkey(&Passkey {
                owner: owner.to_owned(),
                credential_id: cred.id().as_ref().to_vec(),
                name: name.to_owned(),
                static_state,
                dynamic_state: dynamic_state.to_vec(),
                created_at: 0,
                last_used_at: None,
            })
            .await?;
        Ok(())
    }

    /// Options for `navigator.credentials.get` with any passkey of this site (no account named:
    /// the answer's user handle tells whose it is).
    pub fn begin_authentication(&self) -> Result<serde_json::Value> {
        let (server, client) = DiscoverableCredentialRequestOptions::passkey(&self.rp_id)
            .start_ceremony()
            .map_err(|e| anyhow!("passkey options: {e}"))?;
        let json = serde_json::to_value(&client).context("passkey options")?;
        let mut set = self
            .authentications
            .lock()
            .map_err(|_| anyhow!("poisoned"))?;
        if !matches!(
            set.insert_or_replace_all_expired(server),
            InsertResult::Success
        ) {
            bail!("too many passkey sign-ins in progress; try again in a few minutes");
        }
        Ok(json)
    }

    /// Whether `answer` (`PublicKeyCredential.toJSON()` of a `get`) is a valid assertion, by a
    /// passkey of `owner`, for a challenge this server gave. The passkey's counter and flags
    /// are updated.
    pub async fn verify(&self, store: &Store, owner: &str, answer: &[u8]) -> Result<bool> {
        let Ok(auth) = DiscoverableAuthentication64::from_json_relaxed(answer) else {
            return Ok(false);
        };
        let Ok(challenge) = auth.challenge_relaxed() else {
            return Ok(false);
        };
        let Some(server) = self
            .authentications
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .take(&challenge)
        else {
            return Ok(false);
        };
        let Some(key) = store.passkey_by_credential(auth.raw_id().as_ref()).await? else {
            return Ok(false);
        };
        if key.owner != owner {
            return Ok(false);
        }
        let stored = store.passkey_user_handle(owner, &[]).await?;
        let Some(handle) = handle_of(&stored) else {
            return Ok(false);
        };
        let Ok(static_state) = StaticState::decode(key.static_state.as_slice()) else {
            return Ok(false);
        };
        let Ok(dynamic) = <[u8; 7]>::try_from(key.dynamic_state.as_slice()) else {
            return Ok(false);
        };
        let Ok(dynamic_state) = DynamicState::decode(dynamic) else {
            return Ok(false);
        };
        let Ok(id) = CredentialId::decode(key.credential_id.as_slice()) else {
            return Ok(false);
        };
        let Ok(mut cred) = AuthenticatedCredential::new(id, &handle, static_state, dynamic_state)
        else {
            return Ok(false);
        };
        let origins = self.origins();
        let options =
            AuthenticationVerificationOptions::<DomainOrigin<'_, '_>, DomainOrigin<'_, '_>> {
                allowed_origins: &origins,
                ..AuthenticationVerificationOptions::default()
            };
        match server.verify(&self.rp_id, &auth, &mut cred, &options) {
            Ok(_) => {
                let state = cred
                    .dynamic_state()
                    .encode()
                    .map_err(|_| anyhow!("passkey state"))?;
                store.passkey_used(&key.credential_id, &state).await?;
                Ok(true)
            }
            Err(e) => {
                tracing::info!(error = %e, "a passkey assertion was refused");
                Ok(false)
            }
        }
    }
}
