//! Asking the scanners at end of message: spamd and rspamd queried at once, each bounded by
//! its client's timeout; a scanner that fails gives no verdict (logged and counted), never a
//! refusal.

use tracing::warn;

use super::Engine;
use crate::policy::ScanRequest;
use crate::verdict::Verdict;

impl Engine {
    /// The verdicts of the scanners the configuration in force names.
    pub(super) fn scan_message<'a>(
        &'a self,
        request: ScanRequest<'a>,
    ) -> impl std::future::Future<Output = Vec<Verdict>> + Send + 'a {
        let compiled = self.current.load_full();
        async move {
            let spamd = async {
                match &compiled.spamd {
                    Some(c) => Some(c.check(&request).await),
                    None => None,
                }
            };
            let rspamd = async {
                match &compiled.rspamd {
                    Some(c) => Some(c.check(&request).await),
                    None => None,
                }
            };
            let (a, b) = tokio::join!(spamd, rspamd);
            let mut verdicts = Vec::new();
            for (name, result) in [("spamd", a), ("rspamd", b)] {
                match result {
                    Some(Ok(v)) => verdicts.push(v),
                    Some(Err(e)) => {
                        // Never a refusal: the message goes on without this verdict.
                        warn!(queue_id = request.queue_id.unwrap_or(""), "{name} gave no verdict: {e}");
                        self.metrics.verdict(name, "error");
                    }
                    None => {}
                }
            }
            verdicts
        }
    }
}
