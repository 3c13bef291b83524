//! `codereview watch --session S`: follows a session read-only (server
//! streaming), printing one line per event until the stream ends.

use argh::FromArgs;

use super::connect::ClientError;
use super::render::{Style, event_line};
use crate::grpc::client::CallOptions;
use crate::pb::codereview::{SessionMessage, WatchRequest};
use crate::pb::paths::WATCH_SESSION;

crate::cli::connect::client_flags! {
    /// follow a session read-only, one line per event
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "watch")]
    #[argh(help_triggers("-h", "--help", "help"))]
    pub struct WatchArgs {
        /// the session id
        #[argh(option)]
        pub session: String,
        /// start with a snapshot instead of the recent history
        #[argh(switch)]
        pub snapshot: bool,
        /// print JSON lines
        #[argh(switch)]
        pub json: bool,
    }
}

pub async fn run(args: WatchArgs) -> Result<(), ClientError> {
    let channel = args.client_options().connect().await?;
    let style = if args.json { Style::Json } else { Style::Human };
    let mut call = channel.start(WATCH_SESSION, CallOptions::default()).await?;
    let request = WatchRequest {
        session_id: args.session.clone(),
        want_snapshot: args.snapshot,
        ..WatchRequest::default()
    };
    if let Err(send_error) = call.send(&request).await {
        // The server may have ended the call already (an unknown session, a
        // refused token, plaintext on its TLS port): its status says why,
        // better than the broken send.
        return Err(call
            .message::<SessionMessage>()
            .await
            .err()
            .unwrap_or(send_error)
            .into());
    }
    call.close_send();
    while let Some(message) = call.message::<SessionMessage>().await? {
        if let Some(line) = event_line(&message, style) {
            println!("{line}");
        }
    }
    Ok(())
}
