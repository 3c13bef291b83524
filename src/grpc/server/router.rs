//! Routing by `/package.Service/Method` and the small handler API: one
//! registration function per RPC kind (unary, server-streaming,
//! client-streaming, bidirectional), each adapting a typed async function to
//! the dispatcher's untyped [`Call`]. An optional interceptor sees every call's
//! head before its handler (authentication lives there).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use h2::RecvStream;
use tokio::sync::oneshot;

use super::call::{Request, RequestHead, Response, ResponseSink, SinkCore, Streaming};
use crate::grpc::compression::Encoding;
use crate::grpc::metadata::Metadata;
use crate::grpc::observe::Telemetry;
use crate::grpc::status::Status;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The untyped call a handler adapter receives from the dispatcher.
pub struct Call {
    pub(crate) head: RequestHead,
    pub(crate) body: RecvStream,
    pub(crate) sink: SinkCore,
    pub(crate) give_back: oneshot::Sender<SinkCore>,
    pub(crate) max_message_len: usize,
    /// The request's `grpc-encoding`.
    pub(crate) request_encoding: Encoding,
    pub(crate) telemetry: Arc<Telemetry>,
}

impl Call {
    fn split<Req, Resp>(self) -> (RequestHead, Streaming<Req>, ResponseSink<Resp>) {
        let inbound = Streaming::new(
            self.body,
            self.max_message_len,
            self.request_encoding,
            self.telemetry,
        );
        let sink = ResponseSink::new(self.sink, self.give_back);
        (self.head, inbound, sink)
    }
}

/// What a registered method does with a call; returns trailing metadata on
/// success.
pub(crate) type MethodHandler =
    Arc<dyn Fn(Call) -> BoxFuture<Result<Metadata, Status>> + Send + Sync>;

/// Sees each call's head before its handler; an error answers the call.
pub type Interceptor = Arc<dyn Fn(&mut RequestHead) -> Result<(), Status> + Send + Sync>;

/// The methods a server serves.
#[derive(Default, Clone)]
pub struct Router {
    methods: HashMap<&'static str, MethodHandler>,
    services: BTreeSet<String>,
    interceptor: Option<Interceptor>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("services", &self.services)
            .finish()
    }
}

/// Where a path leads.
pub(crate) enum Route<'a> {
    Method(&'static str, &'a MethodHandler),
    UnknownMethod { service: String, method: String },
    UnknownService(String),
    Malformed,
}

impl Router {
    pub fn new() -> Self {
        Router::default()
    }

    fn insert(&mut self, path: &'static str, handler: MethodHandler) {
        let (service, _) =
            split_path(path).expect("method paths look like /package.Service/Method");
        self.services.insert(service.to_owned());
        let previous = self.methods.insert(path, handler);
        assert!(previous.is_none(), "method {path} registered twice");
    }

    /// Sets the interceptor every call passes through.
    pub fn set_interceptor(&mut self, interceptor: Interceptor) {
        self.interceptor = Some(interceptor);
    }

    pub(crate) fn interceptor(&self) -> Option<&Interceptor> {
        self.interceptor.as_ref()
    }

    /// The registered service names.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(String::as_str)
    }

    pub(crate) fn route(&self, path: &str) -> Route<'_> {
        if let Some((&name, handler)) = self.methods.get_key_value(path) {
            return Route::Method(name, handler);
        }
        match split_path(path) {
            None => Route::Malformed,
            Some((service, method)) if self.services.contains(service) => Route::UnknownMethod {
                service: service.to_owned(),
                method: method.to_owned(),
            },
            Some((service, _)) => Route::UnknownService(service.to_owned()),
        }
    }

    /// One request, one response.
    pub fn unary<Req, Resp, F, Fut>(&mut self, path: &'static str, handler: F) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.insert(
            path,
            Arc::new(move |call: Call| {
                let handler = handler.clone();
                Box::pin(async move {
                    let (head, mut inbound, mut sink) = call.split::<Req, Resp>();
                    let message = single_request(&mut inbound).await?;
                    drop(inbound);
                    let response = tokio::select! {
                        response = handler(Request::new(head, message)) => response?,
                        status = sink.cancelled() => return Err(status),
                    };
                    respond_once(&mut sink, response).await
                })
            }),
        );
        self
    }

    /// One request, a stream of responses.
    pub fn server_streaming<Req, Resp, F, Fut>(
        &mut self,
        path: &'static str,
        handler: F,
    ) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Request<Req>, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Metadata, Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.insert(
            path,
            Arc::new(move |call: Call| {
                let handler = handler.clone();
                Box::pin(async move {
                    let (head, mut inbound, sink) = call.split::<Req, Resp>();
                    let message = single_request(&mut inbound).await?;
                    drop(inbound);
                    handler(Request::new(head, message), sink).await
                })
            }),
        );
        self
    }

    /// A stream of requests, one response.
    pub fn client_streaming<Req, Resp, F, Fut>(
        &mut self,
        path: &'static str,
        handler: F,
    ) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Request<Streaming<Req>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.insert(
            path,
            Arc::new(move |call: Call| {
                let handler = handler.clone();
                Box::pin(async move {
                    let (head, inbound, mut sink) = call.split::<Req, Resp>();
                    let response = tokio::select! {
                        response = handler(Request::new(head, inbound)) => response?,
                        status = sink.cancelled() => return Err(status),
                    };
                    respond_once(&mut sink, response).await
                })
            }),
        );
        self
    }

    /// Streams both ways.
    pub fn bidi<Req, Resp, F, Fut>(&mut self, path: &'static str, handler: F) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Request<Streaming<Req>>, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Metadata, Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.insert(
            path,
            Arc::new(move |call: Call| {
                // The handler's own future, boxed as it is: an async block
                // around it would also hold the call it was made from.
                let (head, inbound, sink) = call.split::<Req, Resp>();
                Box::pin(handler(Request::new(head, inbound), sink))
            }),
        );
        self
    }
}

/// Splits `/package.Service/Method` into its service and method names.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// Reads the one request message of a unary or server-streaming call.
async fn single_request<Req: prost::Message + Default>(
    inbound: &mut Streaming<Req>,
) -> Result<Req, Status> {
    let Some(message) = inbound.message().await? else {
        return Err(Status::internal("expected one request message, got none"));
    };
    if inbound.message().await?.is_some() {
        return Err(Status::internal("expected one request message, got more"));
    }
    Ok(message)
}

async fn respond_once<Resp: prost::Message>(
    sink: &mut ResponseSink<Resp>,
    response: Response<Resp>,
) -> Result<Metadata, Status> {
    *sink.initial_metadata_mut() = response.metadata;
    sink.send(&response.message).await?;
    Ok(response.trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split() {
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        assert_eq!(split_path("a.B/C"), None);
        assert_eq!(split_path("/a.B/"), None);
        assert_eq!(split_path("//C"), None);
        assert_eq!(split_path("/a/b/c"), None);
    }
}
