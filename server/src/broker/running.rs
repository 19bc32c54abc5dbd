//! What a worker may say about a job it holds besides ack, nack and touch (issue 9):
//! [`Broker::snooze`] puts the job back for later without using an attempt, and
//! [`Broker::report_progress`] records how far it got, for operators to read back with
//! [`Broker::progress`].
//!
//! Both check the lease like `ack` does. Progress lives with the lease in `LeaseTable`
//! (memory only, gone when the try ends); a snooze is persisted as a `Change::Reschedule`,
//! the same change an operator's promote makes.

use bytes::Bytes;
use qd_protocol::message::LeaseRef;
use qd_protocol::{JobId, MAX_PROGRESS};

use super::job::JobState;
use super::{Broker, BrokerError, Effect};
use crate::model::{Change, Millis};

impl Broker {
    /// Ends the lease and puts the job back to run at `now + delay_ms` (at once for 0),
    /// returning that time. Unlike a nack it uses no attempt and records no error: the
    /// handler chose to wait (a resource not ready yet), it did not fail.
    ///
    /// On disk the job was `Waiting` all along (a lease is never written), so moving its run
    /// time is all there is to persist; its failure count is untouched, and a crash before
    /// the commit simply leaves it waiting at its old run time, as after any crash.
    pub fn snooze(
        &mut self,
        now: Millis,
        lease: LeaseRef,
        delay_ms: u64,
    ) -> Result<Millis, BrokerError> {
        self.check_lease(lease)?;
        self.leases.release(lease.id);
        let run_at_ms = now.saturating_add(delay_ms);
        self.schedule(now, lease.id, Some(JobState::Active), run_at_ms);
        self.effects.push(Effect::Persist(Change::Reschedule { id: lease.id, run_at_ms }));
        self.serve_touched(now);
        Ok(run_at_ms)
    }

    /// Records a running job's progress (opaque bytes, at most `MAX_PROGRESS`), replacing
    /// the previous report. Nothing is persisted: progress describes one try, and after a
    /// restart there is no try.
    pub fn report_progress(&mut self, lease: LeaseRef, progress: Bytes) -> Result<(), BrokerError> {
        if progress.len() > MAX_PROGRESS {
            return Err(BrokerError::InvalidArgument(format!(
                "progress is {} bytes; report at most {MAX_PROGRESS} (a number or a small JSON object)",
                progress.len()
            )));
        }
        self.check_lease(lease)?;
        self.leases.set_progress(lease.id, progress);
        Ok(())
    }

    /// The latest progress reported by the current try of job `id`, if it is active and its
    /// worker reported any.
    pub fn progress(&self, id: JobId) -> Option<&Bytes> {
        self.leases.progress(id)
    }
}
