//! Decoding the scripts' array replies into domain values. Anything out of
//! shape is `StoreError::Internal`: a bug or an incompatible deployment.

use deadpool_redis::redis::{self, Value};

use crate::semaphore::{Millis, Permit, PermitId, SemaphoreName};
use crate::store::StoreError;

/// A script's array reply, read front to back.
pub(super) struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    pub(super) fn new(values: Vec<Value>) -> Self {
        Self(values.into_iter())
    }

    pub(super) fn next_value(&mut self) -> Result<Value, StoreError> {
        self.0
            .next()
            .ok_or_else(|| StoreError::Internal("script reply too short".into()))
    }

    pub(super) fn string(&mut self) -> Result<String, StoreError> {
        redis::from_redis_value(self.next_value()?)
            .map_err(|e| StoreError::Internal(format!("bad script reply: {e}")))
    }

    pub(super) fn int(&mut self) -> Result<i64, StoreError> {
        redis::from_redis_value(self.next_value()?)
            .map_err(|e| StoreError::Internal(format!("bad script reply: {e}")))
    }

    pub(super) fn uint(&mut self) -> Result<u64, StoreError> {
        u64::try_from(self.int()?).map_err(|_| StoreError::Internal("negative in reply".into()))
    }

    pub(super) fn u32(&mut self) -> Result<u32, StoreError> {
        u32::try_from(self.int()?).map_err(|_| StoreError::Internal("out of range reply".into()))
    }

    pub(super) fn holder(&mut self) -> Result<Option<String>, StoreError> {
        let holder = self.string()?;
        Ok((!holder.is_empty()).then_some(holder))
    }

    pub(super) fn permit_id(&mut self) -> Result<PermitId, StoreError> {
        PermitId::parse(&self.string()?)
            .map_err(|_| StoreError::Internal("bad permit id in store".into()))
    }

    /// The `id, count, fence, acquired_ms, expires_ms, holder` tail.
    pub(super) fn permit(&mut self, semaphore: &SemaphoreName) -> Result<Permit, StoreError> {
        let id = self.permit_id()?;
        Ok(Permit {
            id,
            semaphore: semaphore.clone(),
            count: self.u32()?,
            fencing_token: self.uint()?,
            acquired_at: Millis(self.uint()?),
            expires_at: Millis(self.uint()?),
            holder: self.holder()?,
        })
    }
}

pub(super) fn unexpected(tag: &str) -> StoreError {
    StoreError::Internal(format!("unexpected script reply {tag:?}"))
}
