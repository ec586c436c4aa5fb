//! Outgoing mail. [`Mailer`] is what sends one message: [`SmtpMailer`] (lettre, TLS by rustls, which
//! only a loopback server may go without) or [`LogMailer`] for zero configuration. Requests never
//! wait for either: they put mail in the [`Outbox`], whose one worker sends it (with retries), so a
//! slow mail server costs no request anything and cannot tell anyone, by timing, which addresses
//! have accounts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;

use crate::config::{SmtpTarget, SmtpTls};

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Mail waiting to be sent; beyond it new mail is dropped (and counted), never blocking a request.
const QUEUE: usize = 1024;
/// Tries per message, with 1 s, 4 s between them.
const ATTEMPTS: u32 = 3;

/// One plain-text message.
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Sends one message.
pub trait Mailer: Send + Sync + 'static {
    fn send(&self, mail: &Mail) -> Sending<'_>;
    /// For the start-up log line (never a password).
    fn describe(&self) -> String;
}

/// SMTP: `smtp://host[:port]` (STARTTLS, required unless the host is loopback; default port 587)
/// or `smtps://host[:port]` (TLS from the start; default port 465), either with `user:password@`.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    described: String,
}

impl SmtpMailer {
    pub fn new(smtp_url: &str, from: &str) -> Result<Self, String> {
        let target = SmtpTarget::parse(smtp_url)?;
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("mail_from {from:?} is not an address: {e}"))?;
        let host = target.host.clone();
        let tls_params =
            || TlsParameters::new(host.clone()).map_err(|e| format!("TLS for {host}: {e}"));
        let (tls, scheme) = match target.tls {
            SmtpTls::Wrapper => (Tls::Wrapper(tls_params()?), "smtps"),
            SmtpTls::StartTls => (Tls::Required(tls_params()?), "smtp"),
            SmtpTls::None => (Tls::None, "smtp"),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(target.port)
            .tls(tls)
            .timeout(Some(SMTP_TIMEOUT));
        if let Some((user, password)) = target.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            described: format!(
                "{scheme}://{host}:{}{}",
                target.port,
                if target.tls == SmtpTls::None {
                    " (loopback, no TLS)"
                } else {
                    ""
                }
            ),
        })
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, mail: &Mail) -> Sending<'_> {
        let message = (|| {
            Message::builder()
                .from(self.from.clone())
                .to(mail.to.parse::<Mailbox>().map_err(|e| e.to_string())?)
                .subject(mail.subject.clone())
                .header(ContentType::TEXT_PLAIN)
                .body(mail.text.clone())
                .map_err(|e| e.to_string())
        })();
        Box::pin(async move {
            let message = message?;
            self.transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}

/// Zero configuration: no mail leaves the machine. The recipient and subject are logged at info,
/// never the body, which holds the secret link, unless `mail_log_links` (a developer's own machine
/// only) asks for it at debug level, under the target `portcullis::mail_body`.
pub struct LogMailer {
    pub log_links: bool,
}

impl Mailer for LogMailer {
    fn send(&self, mail: &Mail) -> Sending<'_> {
        tracing::info!(to = %mail.to, subject = %mail.subject, "mail not sent: no smtp_url is configured");
        if self.log_links {
            tracing::debug!(target: "portcullis::mail_body", to = %mail.to, body = %mail.text, "mail body (mail_log_links is on)");
        }
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        "log only (set smtp_url to send mail)".into()
    }
}

/// The queue requests put mail in.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Mail>,
}

impl Outbox {
    /// Starts the worker that sends what is queued.
    pub fn start(mailer: Arc<dyn Mailer>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Mail>(QUEUE);
        tokio::spawn(async move {
            while let Some(mail) = rx.recv().await {
                let mut wait = Duration::from_secs(1);
                for attempt in 1..=ATTEMPTS {
                    match mailer.send(&mail).await {
                        Ok(()) => {
                            metrics::counter!("portcullis_mail_total", "outcome" => "sent")
                                .increment(1);
                            break;
                        }
                        Err(e) if attempt == ATTEMPTS => {
                            metrics::counter!("portcullis_mail_total", "outcome" => "failed")
                                .increment(1);
                            tracing::error!(error = %e, subject = %mail.subject, "mail could not be sent");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, attempt, "sending mail failed; trying again");
                            tokio::time::sleep(wait).await;
                            wait *= 4;
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queues `mail`; false (and counted) when the queue is full.
    pub fn enqueue(&self, mail: Mail) -> bool {
        match self.tx.try_send(mail) {
            Ok(()) => true,
            Err(_) => {
                metrics::counter!("portcullis_mail_total", "outcome" => "dropped").increment(1);
                tracing::error!("the mail queue is full; a message was dropped");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_need_tls_except_to_loopback() {
        let ok =
            |u: &str| SmtpMailer::new(u, "Portcullis <auth@example.com>").map(|m| m.describe());
        assert_eq!(
            ok("smtp://127.0.0.1:2525").unwrap(),
            "smtp://127.0.0.1:2525 (loopback, no TLS)"
        );
        assert_eq!(
            ok("smtps://u:p%40ss@mail.example.com").unwrap(),
            "smtps://mail.example.com:465"
        );
        assert_eq!(
            ok("smtp://mail.example.com").unwrap(),
            "smtp://mail.example.com:587"
        );
        for bad in [
            "http://mail.example.com",
            "smtp://",
            "smtp://h/path",
            "smtp://h?tls=none",
            "nonsense",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        assert!(SmtpMailer::new("smtp://127.0.0.1", "not an address").is_err());
        let t = SmtpTarget::parse("smtps://u%40x:p%40ss@mail.example.com").unwrap();
        assert_eq!(t.credentials, Some(("u@x".into(), "p@ss".into())));
        assert_eq!(
            crate::config::mail_address("A <a@b.example>").unwrap(),
            "a@b.example"
        );
        assert!(crate::config::mail_address("A <nope>").is_err());
    }
}
