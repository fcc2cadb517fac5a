//! The gRPC surface: `p2p.auth.v1.AuthService` and `AccountService`.
//! Handlers convert between generated messages and domain types and call
//! the [`Authority`]; generated types stop here. Tokens are verified by the
//! `RequireAuth` wrapper before a handler runs, so handlers only read
//! claims.

use std::sync::Arc;

use p2p_proto::auth::v1 as pb;
use p2p_proto::auth::v1::account_service_server::AccountService;
use p2p_proto::auth::v1::auth_service_server::AuthService;
use p2p_services::auth::{AUDIENCE, ISSUER, PublicKey, Role, claims};
use tonic::{Request, Response, Status};

use crate::account::Account;
use crate::authority::{AccountRef, Authority, Session};
use crate::error::Error;

/// Full paths of the methods that need no access token.
pub const PUBLIC_METHODS: &[&str] = &[
    "/p2p.auth.v1.AuthService/Login",
    "/p2p.auth.v1.AuthService/Refresh",
    "/p2p.auth.v1.AuthService/Logout",
    "/p2p.auth.v1.AuthService/GetSigningKeys",
];

/// An account as the contract shows it.
pub fn user_to_proto(account: Account) -> pb::User {
    pb::User {
        id: account.id,
        username: account.username,
        role: role_to_proto(account.role) as i32,
        disabled: account.disabled,
        created_at_ms: account.created_at_ms,
    }
}

fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::User => pb::Role::User,
        Role::Admin => pb::Role::Admin,
    }
}

/// The role a request names; `None` for ROLE_UNSPECIFIED.
fn role_from_proto(value: i32) -> Result<Option<Role>, Error> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Unspecified) => Ok(None),
        Ok(pb::Role::User) => Ok(Some(Role::User)),
        Ok(pb::Role::Admin) => Ok(Some(Role::Admin)),
        Err(_) => Err(Error::InvalidArgument(format!(
            "unknown role {value}: use ROLE_USER or ROLE_ADMIN"
        ))),
    }
}

fn session_to_proto(session: Session) -> pb::TokenPair {
    pb::TokenPair {
        access_token: session.access.token,
        access_expires_at_ms: session.access.expires_at_ms,
        refresh_token: session.refresh_token,
        refresh_expires_at_ms: session.refresh_expires_at_ms,
        user: Some(user_to_proto(session.account)),
    }
}

fn signing_keys_to_proto(keys: Vec<PublicKey>) -> pb::SigningKeys {
    pb::SigningKeys {
        keys: keys
            .iter()
            .map(|key| pb::SigningKey {
                kid: key.kid.clone(),
                alg: "EdDSA".to_string(),
                public_key: key.to_base64url(),
            })
            .collect(),
        issuer: ISSUER.to_string(),
        audience: AUDIENCE.to_string(),
    }
}

fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Error> {
    if value.is_empty() {
        Err(Error::InvalidArgument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

/// `p2p.auth.v1.AuthService`.
#[derive(Debug, Clone)]
pub struct AuthApi {
    authority: Arc<Authority>,
}

impl AuthApi {
    /// Handlers backed by `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let client = request.remote_addr().map(|a| a.ip());
        let certificate_account = request.peer_certs().and_then(|certs| {
            certs
                .first()
                .and_then(|leaf| p2p_services::tls::issue::account_of(leaf))
        });
        let message = request.into_inner();
        if message.username.is_empty()
            && message.password.is_empty()
            && let Some(account) = certificate_account
        {
            let session = self.authority.login_with_certificate(&account).await?;
            return Ok(Response::new(session_to_proto(session)));
        }
        let session = self
            .authority
            .login(&message.username, &message.password, client)
            .await?;
        Ok(Response::new(session_to_proto(session)))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let session = self
            .authority
            .refresh(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(session_to_proto(session)))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.authority
            .logout(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let account = self.authority.who_am_i(claims(&request)?).await?;
        Ok(Response::new(user_to_proto(account)))
    }

    async fn get_signing_keys(
        &self,
        _request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::SigningKeys>, Status> {
        let keys = self.authority.public_keys().await;
        Ok(Response::new(signing_keys_to_proto(keys)))
    }

    async fn issue_peer_token(
        &self,
        request: Request<pb::IssuePeerTokenRequest>,
    ) -> Result<Response<pb::PeerToken>, Status> {
        let caller = claims(&request)?.clone();
        let message = request.into_inner();
        let token = self
            .authority
            .issue_peer_token(&caller, &message.agent_public_key)
            .await?;
        Ok(Response::new(pb::PeerToken {
            token: token.token,
            expires_at_ms: token.expires_at_ms,
        }))
    }
}

/// `p2p.auth.v1.AccountService`.
#[derive(Debug, Clone)]
pub struct AccountApi {
    authority: Arc<Authority>,
}

impl AccountApi {
    /// Handlers backed by `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl AccountService for AccountApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = claims(&request)?.clone();
        let message = request.into_inner();
        let role = role_from_proto(message.role)?.unwrap_or(Role::User);
        let account = self
            .authority
            .create_user(&caller, &message.username, &message.password, role)
            .await?;
        Ok(Response::new(user_to_proto(account)))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let accounts = self.authority.list_users(claims(&request)?).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: accounts.into_iter().map(user_to_proto).collect(),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = claims(&request)?.clone();
        let message = request.into_inner();
        let which = match (message.user_id.is_empty(), message.username.is_empty()) {
            (false, true) => AccountRef::Id(message.user_id),
            (true, false) => AccountRef::Username(message.username),
            _ => {
                return Err(Error::InvalidArgument(
                    "name the account by exactly one of user_id or username".into(),
                )
                .into());
            }
        };
        self.authority.delete_user(&caller, &which).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = claims(&request)?.clone();
        let message = request.into_inner();
        let username = (!message.username.is_empty()).then_some(message.username.as_str());
        self.authority
            .change_password(
                &caller,
                username,
                &message.old_password,
                &message.new_password,
            )
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = claims(&request)?.clone();
        let message = request.into_inner();
        let role = role_from_proto(message.role)?.ok_or_else(|| {
            Error::InvalidArgument("role is required: ROLE_USER or ROLE_ADMIN".into())
        })?;
        let username = required("username", &message.username)?;
        let account = self.authority.set_role(&caller, username, role).await?;
        Ok(Response::new(user_to_proto(account)))
    }

    async fn set_disabled(
        &self,
        request: Request<pb::SetDisabledRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = claims(&request)?.clone();
        let message = request.into_inner();
        let username = required("username", &message.username)?;
        let account = self
            .authority
            .set_disabled(&caller, username, message.disabled)
            .await?;
        Ok(Response::new(user_to_proto(account)))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::SigningKeys>, Status> {
        let keys = self.authority.rotate_signing_key(claims(&request)?).await?;
        Ok(Response::new(signing_keys_to_proto(keys)))
    }
}
