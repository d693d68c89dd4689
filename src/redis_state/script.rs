//! The Lua scripts, each in its own file under `scripts/`: called by hash (`EVALSHA`) and
//! loaded into the node that lacks one ([`Conn::eval_script`]).

use super::connection::{Conn, ScriptCall};
use super::RedisStateError;

/// One script: its source and its SHA1.
pub(crate) struct LuaScript {
    source: &'static str,
    script: redis::Script,
}

impl LuaScript {
    pub(crate) fn new(source: &'static str) -> Self {
        Self {
            source,
            script: redis::Script::new(source),
        }
    }

    pub(crate) fn source(&self) -> &'static str {
        self.source
    }

    pub(crate) fn hash(&self) -> &str {
        self.script.get_hash()
    }

    /// A call of the script with `keys` (all in one slot); add its arguments with
    /// [`ScriptInvocation::arg`], then [`ScriptInvocation::invoke`].
    pub(crate) fn call(&self, keys: &[&str]) -> ScriptInvocation {
        let mut command = redis::cmd("EVALSHA");
        command.arg(self.hash()).arg(keys.len()).arg(keys);
        ScriptInvocation {
            command,
            source: self.source,
            first_key: keys.first().map(|key| key.to_string()).unwrap_or_default(),
        }
    }
}

/// One call of a script, its arguments added one by one.
pub(crate) struct ScriptInvocation {
    command: redis::Cmd,
    source: &'static str,
    first_key: String,
}

impl ScriptInvocation {
    pub(crate) fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.command.arg(arg);
        self
    }

    /// Runs the call, loading the script into the node of its first key when it is missing.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        connection: &mut Conn,
    ) -> Result<T, RedisStateError> {
        connection
            .eval_script(
                &ScriptCall::Command(&self.command),
                self.source,
                &self.first_key,
            )
            .await
    }
}

/// Every script of the flash-sale state.
pub(crate) struct Scripts {
    pub purchase: LuaScript,
    pub purchase_batch: LuaScript,
    pub activity_create: LuaScript,
    pub activity_reset: LuaScript,
    pub activity_add_stock: LuaScript,
    pub activity_end: LuaScript,
    pub activity_restore_begin: LuaScript,
    pub activity_restore_purchases: LuaScript,
    pub activity_restore_finish: LuaScript,
    pub log_take: LuaScript,
    pub log_ack: LuaScript,
    pub log_renew_lease: LuaScript,
    pub log_claim: LuaScript,
    pub log_unregister: LuaScript,
    pub payment_batch: LuaScript,
    pub order_expire: LuaScript,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        macro_rules! script {
            ($name:literal) => {
                LuaScript::new(include_str!(concat!("scripts/", $name, ".lua")))
            };
        }
        // Scripts that write lists of any length share each_chunk, prepended to each.
        macro_rules! chunked_script {
            ($name:literal) => {
                LuaScript::new(concat!(
                    include_str!("scripts/each_chunk.lua"),
                    include_str!(concat!("scripts/", $name, ".lua"))
                ))
            };
        }
        // The order scripts also share the order helpers.
        macro_rules! order_script {
            ($name:literal) => {
                LuaScript::new(concat!(
                    include_str!("scripts/each_chunk.lua"),
                    include_str!("scripts/orders_common.lua"),
                    include_str!(concat!("scripts/", $name, ".lua"))
                ))
            };
        }
        Self {
            purchase: script!("purchase"),
            purchase_batch: chunked_script!("purchase_batch"),
            activity_create: script!("activity_create"),
            activity_reset: script!("activity_reset"),
            activity_add_stock: script!("activity_add_stock"),
            activity_end: script!("activity_end"),
            activity_restore_begin: script!("activity_restore_begin"),
            activity_restore_purchases: script!("activity_restore_purchases"),
            activity_restore_finish: script!("activity_restore_finish"),
            log_take: script!("log_take"),
            log_ack: script!("log_ack"),
            log_renew_lease: script!("log_renew_lease"),
            log_claim: script!("log_claim"),
            log_unregister: script!("log_unregister"),
            payment_batch: order_script!("payment_batch"),
            order_expire: order_script!("order_expire"),
        }
    }
}
