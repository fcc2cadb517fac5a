//! Every SQL statement auth-svc runs, behind methods named for what they
//! mean. The same query text runs on SQLite and PostgreSQL through sqlx's
//! `Any` driver (`$N` placeholders, BIGINT times in Unix milliseconds).
//!
//! **Architecture Invariant:** no other module of auth-svc writes SQL.
//!
//! Changes that could remove the last enabled admin (delete, demote,
//! disable) first update the single `admin_guard` row: that makes the
//! transaction a writer from its first statement on SQLite, and takes a row
//! lock on PostgreSQL, so two such changes never both see "another admin is
//! left" and both go ahead.

use p2p_services::auth::Role;
use p2p_services::db::{self, Database, Migrations};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::account::Account;
use crate::error::{Error, JoinTokenRejection, RefreshRejection};
use crate::join_token::JoinTokenRecord;
use crate::throttle::{ClientAddr, FORGET_AFTER, FailedLogins, Failures};

/// A stored signing key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// PKCS#8 DER of the private key.
    pub private_key_der: Vec<u8>,
    /// When it was made, Unix milliseconds.
    pub created_at_ms: i64,
    /// When a newer key replaced it, Unix milliseconds; `None` while it
    /// signs.
    pub retired_at_ms: Option<i64>,
}

/// A refresh token about to be stored.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// BLAKE3 hex of the token.
    pub token_hash: String,
    /// `jti` of the access token issued with it.
    pub access_jti: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// The change an administrator makes to an account.
#[derive(Debug, Clone, Copy)]
enum AdminChange {
    Delete,
    SetRole(Role),
    SetDisabled(bool),
}

impl AdminChange {
    /// Whether applying the change to `target` takes away an enabled admin.
    fn removes_enabled_admin(self, target: &Account) -> bool {
        let enabled_admin = target.role == Role::Admin && !target.disabled;
        enabled_admin
            && match self {
                AdminChange::Delete => true,
                AdminChange::SetRole(role) => role != Role::Admin,
                AdminChange::SetDisabled(disabled) => disabled,
            }
    }
}

/// A boolean column value. Flags are BIGINT 0/1 on both backends because
/// the `Any` driver cannot decode SQLite `BOOLEAN` columns.
fn flag(value: bool) -> i64 {
    i64::from(value)
}

const ACCOUNT_COLUMNS: &str = "id, username, role, disabled, created_at_ms";

fn account_from_row(row: &AnyRow) -> Result<Account, Error> {
    let role: String = row.try_get("role")?;
    Ok(Account {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        role: Role::parse(&role)
            .ok_or_else(|| Error::Internal(format!("account has unknown role {role:?}")))?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn join_token_from_row(row: &AnyRow) -> Result<JoinTokenRecord, Error> {
    let count = |column: &str| -> Result<u32, Error> {
        let value: i64 = row.try_get(column)?;
        u32::try_from(value)
            .map_err(|_| Error::Internal(format!("join token has {column} = {value}")))
    };
    Ok(JoinTokenRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        username: row.try_get("username")?,
        uses: count("uses")?,
        uses_left: count("uses_left")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
        description: row.try_get("description")?,
        created_by: row.try_get("created_by")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// auth-svc's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Opens (creating a SQLite file if missing) and migrates the database.
    pub async fn open(url: &str) -> Result<Self, Error> {
        let Database { pool, .. } = db::connect(
            url,
            &Migrations {
                sqlite: sqlx::migrate!("migrations/sqlite"),
                postgres: sqlx::migrate!("migrations/postgres"),
            },
        )
        .await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // --- signing keys ---

    /// Every signing key, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, Error> {
        let rows = sqlx::query(
            "SELECT kid, private_key_der, created_at_ms, retired_at_ms FROM signing_keys \
             ORDER BY created_at_ms DESC, kid DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    kid: row.try_get("kid")?,
                    private_key_der: row.try_get("private_key_der")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    retired_at_ms: row.try_get("retired_at_ms")?,
                })
            })
            .collect()
    }

    /// Stores a signing key (the first one, at start-up).
    pub async fn add_signing_key(&self, key: &StoredKey) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_key_der, created_at_ms, retired_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (kid) DO NOTHING",
        )
        .bind(&key.kid)
        .bind(&key.private_key_der)
        .bind(key.created_at_ms)
        .bind(key.retired_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes `new` the key that signs: retires every key in use at `now_ms`,
    /// stores `new`, and deletes the keys retired before
    /// `forget_retired_before_ms` (no token they signed can still be valid),
    /// in one transaction. Two rotations racing on PostgreSQL may leave both
    /// new keys in use; the newer one signs and the other verifies until the
    /// next rotation, which is harmless.
    pub async fn rotate_signing_key(
        &self,
        new: &StoredKey,
        now_ms: i64,
        forget_retired_before_ms: i64,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at_ms = $1 WHERE retired_at_ms IS NULL")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_key_der, created_at_ms, retired_at_ms) \
             VALUES ($1, $2, $3, NULL)",
        )
        .bind(&new.kid)
        .bind(&new.private_key_der)
        .bind(new.created_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM signing_keys WHERE retired_at_ms < $1")
            .bind(forget_retired_before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- accounts ---

    /// Number of accounts.
    pub async fn count_accounts(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Creates an account; `UserExists` when the username is taken. One
    /// statement, so nothing is ever half-created.
    pub async fn create_account(
        &self,
        account: &Account,
        password_hash: &str,
    ) -> Result<Account, Error> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, username, password_hash, role, disabled, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username) DO NOTHING \
             RETURNING {ACCOUNT_COLUMNS}"
        ))
        .bind(&account.id)
        .bind(&account.username)
        .bind(password_hash)
        .bind(account.role.as_str())
        .bind(flag(account.disabled))
        .bind(account.created_at_ms)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => account_from_row(&row),
            None => Err(Error::UserExists(account.username.clone())),
        }
    }

    /// Creates `account` only if there are no accounts at all (first
    /// start). Returns whether it was created.
    pub async fn create_first_account(
        &self,
        account: &Account,
        password_hash: &str,
    ) -> Result<bool, Error> {
        let result = sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, disabled, created_at_ms) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM users) \
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(&account.id)
        .bind(&account.username)
        .bind(password_hash)
        .bind(account.role.as_str())
        .bind(flag(account.disabled))
        .bind(account.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The account named `username` and its password hash, if any.
    pub async fn credentials_of(&self, username: &str) -> Result<Option<(Account, String)>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS}, password_hash FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((account_from_row(&row)?, row.try_get("password_hash")?)))
            .transpose()
    }

    /// The account with id `id`, if any.
    pub async fn account_by_id(&self, id: &str) -> Result<Option<Account>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// The account named `username`, if any.
    pub async fn account_by_username(&self, username: &str) -> Result<Option<Account>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// Every account, by username.
    pub async fn list_accounts(&self) -> Result<Vec<Account>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(account_from_row).collect()
    }

    /// Deletes an account, its refresh tokens and its join tokens, unless it is the last
    /// enabled admin.
    pub async fn delete_account(&self, id: &str) -> Result<(), Error> {
        let mut tx = self.guarded_transaction().await?;
        let target = Self::target(&mut tx, id, AdminChange::Delete).await?;
        for table in ["refresh_tokens", "join_tokens"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(&target.id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(&target.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes an account's role, unless that demotes the last enabled admin.
    pub async fn set_role(&self, id: &str, role: Role) -> Result<Account, Error> {
        let mut tx = self.guarded_transaction().await?;
        let target = Self::target(&mut tx, id, AdminChange::SetRole(role)).await?;
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.as_str())
            .bind(&target.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Account { role, ..target })
    }

    /// Disables or re-enables an account, unless that disables the last
    /// enabled admin. Disabling revokes every refresh token at once.
    pub async fn set_disabled(
        &self,
        id: &str,
        disabled: bool,
        now_ms: i64,
    ) -> Result<Account, Error> {
        let mut tx = self.guarded_transaction().await?;
        let target = Self::target(&mut tx, id, AdminChange::SetDisabled(disabled)).await?;
        sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(flag(disabled))
            .bind(&target.id)
            .execute(&mut *tx)
            .await?;
        if disabled {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at_ms = $1 \
                 WHERE user_id = $2 AND revoked_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(&target.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Account { disabled, ..target })
    }

    /// Replaces an account's password hash and revokes its refresh tokens,
    /// except the session whose latest access token has id `keep_jti` (the
    /// caller's own session when users change their own password).
    pub async fn set_password(
        &self,
        id: &str,
        password_hash: &str,
        keep_jti: Option<&str>,
        now_ms: i64,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::UserNotFound(id.to_string()));
        }
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at_ms = $1 \
             WHERE user_id = $2 AND revoked_at_ms IS NULL AND family_id NOT IN \
             (SELECT family_id FROM refresh_tokens WHERE access_jti = $3)",
        )
        .bind(now_ms)
        .bind(id)
        .bind(keep_jti.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn guarded_transaction(&self) -> Result<Transaction<'static, Any>, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE admin_guard SET touched = touched + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Loads the target of an admin change and refuses it when it would
    /// leave no enabled admin.
    async fn target(
        tx: &mut Transaction<'static, Any>,
        id: &str,
        change: AdminChange,
    ) -> Result<Account, Error> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        let target = match row {
            Some(row) => account_from_row(&row)?,
            None => return Err(Error::UserNotFound(id.to_string())),
        };
        if change.removes_enabled_admin(&target) {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM users \
                 WHERE role = 'admin' AND disabled = $1 AND id <> $2",
            )
            .bind(flag(false))
            .bind(&target.id)
            .fetch_one(&mut **tx)
            .await?;
            let others: i64 = row.try_get("n")?;
            if others == 0 {
                return Err(Error::LastAdmin(target.username));
            }
        }
        Ok(target)
    }

    // --- refresh tokens ---

    /// Stores the first refresh token of a new login (a new family).
    pub async fn start_session(&self, user_id: &str, token: &NewRefreshToken) -> Result<(), Error> {
        let family = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO refresh_tokens \
             (token_hash, user_id, family_id, access_jti, created_at_ms, expires_at_ms, rotated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.token_hash)
        .bind(user_id)
        .bind(&family)
        .bind(&token.access_jti)
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .bind(flag(false))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Exchanges the refresh token hashed as `old_hash` for `new`, in one
    /// transaction. A token that was already exchanged revokes its whole
    /// family (it was stolen, or the client is confused: either way the
    /// session is no longer trustworthy). Returns the account, which must
    /// still exist and be enabled.
    pub async fn rotate_session(
        &self,
        old_hash: &str,
        new: &NewRefreshToken,
    ) -> Result<Account, Error> {
        let now_ms = new.created_at_ms;
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at_ms = $1, rotated = $2 \
             WHERE token_hash = $3 AND revoked_at_ms IS NULL AND expires_at_ms > $1 \
             RETURNING user_id, family_id",
        )
        .bind(now_ms)
        .bind(flag(true))
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(claimed) = claimed else {
            let rejection = Self::why_unusable(&mut tx, old_hash, now_ms).await?;
            tx.commit().await?;
            return Err(Error::Refresh(rejection));
        };
        let user_id: String = claimed.try_get("user_id")?;
        let family: String = claimed.try_get("family_id")?;
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users WHERE id = $1"
        ))
        .bind(&user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let account = match row {
            Some(row) => account_from_row(&row)?,
            None => return Err(Error::AccountUnusable(user_id)),
        };
        if account.disabled {
            return Err(Error::AccountUnusable(account.username));
        }
        sqlx::query(
            "INSERT INTO refresh_tokens \
             (token_hash, user_id, family_id, access_jti, created_at_ms, expires_at_ms, rotated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&new.token_hash)
        .bind(&account.id)
        .bind(&family)
        .bind(&new.access_jti)
        .bind(new.created_at_ms)
        .bind(new.expires_at_ms)
        .bind(flag(false))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(account)
    }

    /// Why a refresh token could not be claimed; revokes its family on reuse.
    async fn why_unusable(
        tx: &mut Transaction<'static, Any>,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<RefreshRejection, Error> {
        let row = sqlx::query(
            "SELECT family_id, revoked_at_ms, rotated FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshRejection::Unknown);
        };
        let rotated = row.try_get::<i64, _>("rotated")? != 0;
        let revoked_at: Option<i64> = row.try_get("revoked_at_ms")?;
        if rotated {
            let family: String = row.try_get("family_id")?;
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at_ms = $1 \
                 WHERE family_id = $2 AND revoked_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(&family)
            .execute(&mut **tx)
            .await?;
            tracing::warn!(family = %family, "refresh token reused; session family revoked");
            return Ok(RefreshRejection::Reused);
        }
        Ok(if revoked_at.is_some() {
            RefreshRejection::Revoked
        } else {
            RefreshRejection::Expired
        })
    }

    /// Revokes the session the refresh token belongs to. Unknown tokens are
    /// ignored: logout is idempotent.
    pub async fn end_session(&self, token_hash: &str, now_ms: i64) -> Result<(), Error> {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at_ms = $1 WHERE revoked_at_ms IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
        )
        .bind(now_ms)
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // --- join tokens ---

    /// Stores a new join token whose secret hashes to `secret_hash`.
    pub async fn create_join_token(
        &self,
        token: &JoinTokenRecord,
        secret_hash: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, user_id, uses, uses_left, expires_at_ms, \
             revoked, description, created_by, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&token.id)
        .bind(secret_hash)
        .bind(&token.user_id)
        .bind(i64::from(token.uses))
        .bind(i64::from(token.uses_left))
        .bind(token.expires_at_ms)
        .bind(flag(token.revoked))
        .bind(&token.description)
        .bind(&token.created_by)
        .bind(token.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every join token, newest first, spent, expired and revoked ones too.
    pub async fn list_join_tokens(&self) -> Result<Vec<JoinTokenRecord>, Error> {
        let rows = sqlx::query(
            "SELECT j.id, j.user_id, u.username, j.uses, j.uses_left, j.expires_at_ms, \
             j.revoked, j.description, j.created_by, j.created_at_ms \
             FROM join_tokens j JOIN users u ON u.id = j.user_id \
             ORDER BY j.created_at_ms DESC, j.id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(join_token_from_row).collect()
    }

    /// Revokes the join token `id`; revoking it again changes nothing.
    /// `JoinTokenNotFound` when no token has that id.
    pub async fn revoke_join_token(&self, id: &str) -> Result<(), Error> {
        let updated = sqlx::query("UPDATE join_tokens SET revoked = $1 WHERE id = $2")
            .bind(flag(true))
            .bind(id)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::JoinTokenNotFound(id.to_string()));
        }
        Ok(())
    }

    /// Spends one use of the join token whose secret hashes to
    /// `secret_hash` and returns its account. The use is taken by one
    /// statement that checks everything (not revoked, not expired at
    /// `now_ms`, a use left, the account enabled), so two machines racing
    /// for the last use cannot both win, on either backend: SQLite runs one
    /// writer at a time, and PostgreSQL re-checks the conditions on the
    /// locked row. When nothing was spent, says why.
    pub async fn redeem_join_token(
        &self,
        secret_hash: &str,
        now_ms: i64,
    ) -> Result<Account, Error> {
        let spent = sqlx::query(
            "UPDATE join_tokens SET uses_left = uses_left - 1 \
             WHERE secret_hash = $1 AND revoked = $2 AND expires_at_ms > $3 AND uses_left > 0 \
             AND user_id IN (SELECT id FROM users WHERE disabled = $2) \
             RETURNING user_id",
        )
        .bind(secret_hash)
        .bind(flag(false))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = spent {
            let user_id: String = row.try_get("user_id")?;
            // Deleted in between: the token went with it.
            return self
                .account_by_id(&user_id)
                .await?
                .ok_or(Error::JoinToken(JoinTokenRejection::Unknown));
        }
        let row = sqlx::query(
            "SELECT j.revoked, j.expires_at_ms, j.uses_left, u.username, u.disabled \
             FROM join_tokens j JOIN users u ON u.id = j.user_id WHERE j.secret_hash = $1",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Err(Error::JoinToken(JoinTokenRejection::Unknown));
        };
        let rejection = if row.try_get::<i64, _>("revoked")? != 0 {
            JoinTokenRejection::Revoked
        } else if row.try_get::<i64, _>("expires_at_ms")? <= now_ms {
            JoinTokenRejection::Expired
        } else if row.try_get::<i64, _>("uses_left")? <= 0 {
            JoinTokenRejection::Spent
        } else if row.try_get::<i64, _>("disabled")? != 0 {
            return Err(Error::JoinTokenAccountDisabled(row.try_get("username")?));
        } else {
            // Usable now: it changed between the two statements. Refusing
            // is safe; the machine asks again.
            return Err(Error::Internal(
                "a join token changed while it was redeemed".into(),
            ));
        };
        Err(Error::JoinToken(rejection))
    }

    // --- login throttling ---

    /// The failure counts that decide a login attempt from `addr`, for
    /// `username` when it is a name an account could have.
    pub async fn failed_logins(
        &self,
        username: Option<&str>,
        addr: &ClientAddr,
    ) -> Result<FailedLogins, Error> {
        let failures = |row: AnyRow| -> Result<Failures, Error> {
            Ok(Failures {
                count: row.try_get("failures")?,
                last_ms: row.try_get("last_failure_ms")?,
            })
        };
        let account_from_address = match username {
            Some(username) => sqlx::query(
                "SELECT failures, last_failure_ms FROM login_failures \
                 WHERE username = $1 AND address = $2",
            )
            .bind(username)
            .bind(addr.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(failures)
            .transpose()?,
            None => None,
        };
        let address = sqlx::query(
            "SELECT failures, last_failure_ms FROM address_login_failures WHERE address = $1",
        )
        .bind(addr.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(failures)
        .transpose()?;
        Ok(FailedLogins {
            account_from_address,
            address,
        })
    }

    /// Records a failed login from `addr` (for `username` too, when it is a
    /// name an account could have, known or not) and returns the new counts.
    /// Each count is one statement mirroring [`Failures::next`], so
    /// concurrent failures on any replica are all counted.
    pub async fn record_failed_login(
        &self,
        username: Option<&str>,
        addr: &ClientAddr,
        now_ms: i64,
    ) -> Result<FailedLogins, Error> {
        let forget_ms = FORGET_AFTER.as_millis() as i64;
        let account_from_address = match username {
            Some(username) => {
                let row = sqlx::query(
                    "INSERT INTO login_failures (username, address, failures, last_failure_ms) \
                     VALUES ($1, $2, 1, $3) ON CONFLICT (username, address) DO UPDATE SET \
                     failures = CASE WHEN login_failures.last_failure_ms + $4 <= $3 \
                         THEN 1 ELSE login_failures.failures + 1 END, \
                     last_failure_ms = $3 \
                     RETURNING failures, last_failure_ms",
                )
                .bind(username)
                .bind(addr.as_str())
                .bind(now_ms)
                .bind(forget_ms)
                .fetch_one(&self.pool)
                .await?;
                Some(Failures {
                    count: row.try_get("failures")?,
                    last_ms: row.try_get("last_failure_ms")?,
                })
            }
            None => None,
        };
        let row = sqlx::query(
            "INSERT INTO address_login_failures (address, failures, last_failure_ms) \
             VALUES ($1, 1, $2) ON CONFLICT (address) DO UPDATE SET \
             failures = CASE WHEN address_login_failures.last_failure_ms + $3 <= $2 \
                 THEN 1 ELSE address_login_failures.failures + 1 END, \
             last_failure_ms = $2 \
             RETURNING failures, last_failure_ms",
        )
        .bind(addr.as_str())
        .bind(now_ms)
        .bind(forget_ms)
        .fetch_one(&self.pool)
        .await?;
        let address = Failures {
            count: row.try_get("failures")?,
            last_ms: row.try_get("last_failure_ms")?,
        };
        if address.count == 1 {
            // A fresh count: a good moment to drop counts nobody needs, so
            // guessed usernames and passing addresses do not pile up.
            for table in ["login_failures", "address_login_failures"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE last_failure_ms + $1 <= $2"
                ))
                .bind(forget_ms)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(FailedLogins {
            account_from_address,
            address: Some(address),
        })
    }

    /// Forgets the failures of `username` from `addr` after it logged in
    /// from there. The address's own count stays.
    pub async fn clear_failed_logins(
        &self,
        username: &str,
        addr: &ClientAddr,
    ) -> Result<(), Error> {
        sqlx::query("DELETE FROM login_failures WHERE username = $1 AND address = $2")
            .bind(username)
            .bind(addr.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(role: Role, disabled: bool) -> Account {
        Account {
            id: "u".into(),
            username: "u".into(),
            role,
            disabled,
            created_at_ms: 0,
        }
    }

    #[test]
    fn only_changes_that_take_away_an_enabled_admin_are_guarded() {
        let admin = account(Role::Admin, false);
        assert!(AdminChange::Delete.removes_enabled_admin(&admin));
        assert!(AdminChange::SetRole(Role::User).removes_enabled_admin(&admin));
        assert!(AdminChange::SetDisabled(true).removes_enabled_admin(&admin));
        assert!(!AdminChange::SetRole(Role::Admin).removes_enabled_admin(&admin));
        assert!(!AdminChange::SetDisabled(false).removes_enabled_admin(&admin));
        let user = account(Role::User, false);
        assert!(!AdminChange::Delete.removes_enabled_admin(&user));
        let disabled_admin = account(Role::Admin, true);
        assert!(!AdminChange::Delete.removes_enabled_admin(&disabled_admin));
    }

    #[tokio::test]
    async fn failed_logins_count_per_account_and_address_and_clear_per_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&db::testing::sqlite_url(dir.path(), "t.db"))
            .await
            .unwrap();
        let here = ClientAddr::new(Some("10.0.0.1".parse().unwrap()));
        let there = ClientAddr::new(Some("10.0.0.2".parse().unwrap()));
        assert_eq!(
            store.failed_logins(Some("bob"), &here).await.unwrap(),
            FailedLogins::default()
        );
        store
            .record_failed_login(Some("bob"), &here, 1_000)
            .await
            .unwrap();
        let counts = store
            .record_failed_login(Some("bob"), &here, 2_000)
            .await
            .unwrap();
        let two = Failures {
            count: 2,
            last_ms: 2_000,
        };
        assert_eq!(counts.account_from_address, Some(two));
        assert_eq!(counts.address, Some(two));
        store.record_failed_login(None, &here, 3_000).await.unwrap();
        let read = store.failed_logins(Some("bob"), &here).await.unwrap();
        assert_eq!(read.account_from_address, Some(two));
        assert_eq!(read.address.map(|f| f.count), Some(3));
        assert_eq!(
            store.failed_logins(Some("bob"), &there).await.unwrap(),
            FailedLogins::default(),
            "another address starts clean"
        );

        store.clear_failed_logins("bob", &here).await.unwrap();
        let read = store.failed_logins(Some("bob"), &here).await.unwrap();
        assert_eq!(read.account_from_address, None);
        assert_eq!(
            read.address.map(|f| f.count),
            Some(3),
            "address count stays"
        );

        let later = 3_000 + FORGET_AFTER.as_millis() as i64;
        let fresh = store
            .record_failed_login(Some("carol"), &there, later)
            .await
            .unwrap();
        assert_eq!(fresh.address.map(|f| f.count), Some(1));
        assert_eq!(
            store.failed_logins(Some("bob"), &here).await.unwrap(),
            FailedLogins::default(),
            "idle counts are deleted when a fresh count starts"
        );
    }

    #[tokio::test]
    async fn rotation_retires_the_key_in_use_and_forgets_long_retired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&db::testing::sqlite_url(dir.path(), "t.db"))
            .await
            .unwrap();
        let key = |kid: &str, created_at_ms| StoredKey {
            kid: kid.into(),
            private_key_der: vec![1, 2, 3],
            created_at_ms,
            retired_at_ms: None,
        };
        store.add_signing_key(&key("a", 1_000)).await.unwrap();
        store
            .rotate_signing_key(&key("b", 2_000), 2_000, 0)
            .await
            .unwrap();
        store
            .rotate_signing_key(&key("c", 3_000), 3_000, 0)
            .await
            .unwrap();
        let keys = store.signing_keys().await.unwrap();
        let seen: Vec<(&str, Option<i64>)> = keys
            .iter()
            .map(|k| (k.kid.as_str(), k.retired_at_ms))
            .collect();
        assert_eq!(seen, [("c", None), ("b", Some(3_000)), ("a", Some(2_000))]);
        // Keys retired before 2_500 are gone after the next rotation.
        store
            .rotate_signing_key(&key("d", 4_000), 4_000, 2_500)
            .await
            .unwrap();
        let kids: Vec<String> = store
            .signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids, ["d", "c", "b"]);
    }
}
