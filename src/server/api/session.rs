//! The `Session` stream: acquire, extend, release and check as messages of
//! one bidirectional stream, each served as its unary RPC would be.

use std::sync::Arc;
use std::time::Duration;

use tonic::Request;
use tonic::Status;

use super::Api;
use crate::auth::Principal;
use crate::engine::EngineError;
use crate::proto::v1::leasehold_server::Leasehold;
use crate::proto::v1::{self, session_call, session_reply};
use crate::wire::EPOCH_HEADER;

impl Api {
    /// One call of a session, served as its unary RPC would be.
    pub(super) async fn serve_session_call(
        &self,
        call: v1::SessionCall,
        principal: Option<Arc<Principal>>,
    ) -> v1::SessionReply {
        let result = match self
            .session_call(call.call, call.timeout_ms, call.epoch, principal)
            .await
        {
            Ok(result) => result,
            Err(status) => session_reply::Result::Status(v1::CallStatus {
                code: status.code() as i32,
                message: status.message().to_string(),
                details: status.details().to_vec(),
            }),
        };
        v1::SessionReply {
            call_id: call.call_id,
            result: Some(result),
        }
    }

    async fn session_call(
        &self,
        call: Option<session_call::Call>,
        timeout_ms: u64,
        epoch: u64,
        principal: Option<Arc<Principal>>,
    ) -> Result<session_reply::Result, Status> {
        // The unary RPC's metadata, from the call's fields, and its caller,
        // the session's.
        fn unary<T>(
            message: T,
            timeout_ms: u64,
            epoch: u64,
            principal: &Option<Arc<Principal>>,
        ) -> Request<T> {
            let mut request = Request::new(message);
            if let Some(principal) = &principal {
                request.extensions_mut().insert(Arc::clone(principal));
            }
            if timeout_ms > 0 {
                request.set_timeout(Duration::from_millis(timeout_ms));
            }
            if epoch > 0 {
                request
                    .metadata_mut()
                    .insert(EPOCH_HEADER, tonic::metadata::MetadataValue::from(epoch));
            }
            request
        }
        use session_call::Call as C;
        use session_reply::Result as R;
        Ok(match call {
            Some(C::Acquire(r)) => R::Acquire(
                self.acquire(unary(r, timeout_ms, epoch, &principal))
                    .await?
                    .into_inner(),
            ),
            Some(C::Extend(r)) => R::Extend(
                self.extend(unary(r, timeout_ms, epoch, &principal))
                    .await?
                    .into_inner(),
            ),
            Some(C::Release(r)) => R::Release(
                self.release(unary(r, timeout_ms, epoch, &principal))
                    .await?
                    .into_inner(),
            ),
            Some(C::Check(r)) => R::Check(
                self.check(unary(r, timeout_ms, epoch, &principal))
                    .await?
                    .into_inner(),
            ),
            None => {
                return Err(EngineError::invalid(
                    "call",
                    "must be one of acquire, extend, release, check",
                )
                .into())
            }
        })
    }
}
