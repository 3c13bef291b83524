//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`, the same
//! messages under two package names): lets grpcurl, grpcui, Postman and the
//! like list the services and call them without the .proto files.
//!
//! It describes whatever FileDescriptorSet it is given, and of it only the
//! files that define a service the router serves, plus what those files
//! import: a test service compiled into the binary but not served stays
//! invisible. The set is decoded with a few hand-written prost structs
//! holding only the fields an index needs (names, packages, dependencies,
//! nested declarations); the files themselves are sent as the exact bytes of
//! the set, never re-encoded.
//!
//! Answering is a pure function of the index and the question
//! ([`DescriptorIndex::answer`]), for tests and the fuzz target; the stream
//! handler only loops over it. A question without an answer gets an
//! `ErrorResponse` (NOT_FOUND, or INVALID_ARGUMENT for an empty one) and the
//! stream goes on, as the protocol asks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::metadata::Metadata;
use super::server::{Request, ResponseSink, Router, Streaming};
use super::status::Code;
use crate::pb::reflection::server_reflection_request::MessageRequest;
use crate::pb::reflection::server_reflection_response::MessageResponse;
use crate::pb::reflection::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
};

/// The reflection service, current name.
pub const V1_SERVICE: &str = "grpc.reflection.v1.ServerReflection";
/// The reflection service, the name older tools ask for.
pub const V1ALPHA_SERVICE: &str = "grpc.reflection.v1alpha.ServerReflection";
const V1_METHOD: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA_METHOD: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Whether a method path is the reflection service's. Like health, it is
/// answered without credentials: it says nothing but the API's shape.
pub fn is_reflection_method(path: &str) -> bool {
    path == V1_METHOD || path == V1ALPHA_METHOD
}

// The slice of descriptor.proto an index needs. Unknown fields are skipped by
// prost, so these decode any FileDescriptorProto.

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorSet {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

#[derive(Clone, PartialEq, Message)]
struct FileProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    package: String,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<MessageProto>,
    #[prost(message, repeated, tag = "5")]
    enum_type: Vec<EnumProto>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceProto>,
    #[prost(message, repeated, tag = "7")]
    extension: Vec<FieldProto>,
}

#[derive(Clone, PartialEq, Message)]
struct MessageProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    field: Vec<FieldProto>,
    #[prost(message, repeated, tag = "3")]
    nested_type: Vec<MessageProto>,
    #[prost(message, repeated, tag = "4")]
    enum_type: Vec<EnumProto>,
    #[prost(message, repeated, tag = "6")]
    extension: Vec<FieldProto>,
    #[prost(message, repeated, tag = "8")]
    oneof_decl: Vec<NamedProto>,
}

#[derive(Clone, PartialEq, Message)]
struct FieldProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    extendee: String,
    #[prost(int32, tag = "3")]
    number: i32,
}

#[derive(Clone, PartialEq, Message)]
struct EnumProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    value: Vec<NamedProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    method: Vec<NamedProto>,
}

/// Methods, enum values and oneofs: only their names matter here.
#[derive(Clone, PartialEq, Message)]
struct NamedProto {
    #[prost(string, tag = "1")]
    name: String,
}

/// One file of the set: its encoded descriptor and what it imports.
#[derive(Debug)]
struct FileEntry {
    name: String,
    encoded: Bytes,
    dependencies: Vec<usize>,
}

/// What reflection can tell: the exposed files, by name and by the symbols
/// they declare.
#[derive(Debug)]
pub struct DescriptorIndex {
    files: Vec<FileEntry>,
    by_name: HashMap<String, usize>,
    symbols: HashMap<String, usize>,
    /// Message type → its extensions' field numbers and declaring files.
    /// Every exposed message type has an entry (most with none).
    extensions: HashMap<String, BTreeMap<i32, usize>>,
    services: Vec<String>,
}

/// Symbols a file declares, collected while walking it.
#[derive(Default)]
struct Declarations {
    symbols: Vec<String>,
    services: Vec<String>,
    messages: Vec<String>,
    /// (extendee, number)
    extensions: Vec<(String, i32)>,
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

fn declare_extension(field: &FieldProto, scope: &str, out: &mut Declarations) {
    out.symbols.push(qualify(scope, &field.name));
    let extendee = field.extendee.trim_start_matches('.').to_owned();
    out.extensions.push((extendee, field.number));
}

/// Enum values are scoped like the enum itself (siblings of it), as
/// protobuf's name resolution has them.
fn declare_enum(enumeration: &EnumProto, scope: &str, out: &mut Declarations) {
    out.symbols.push(qualify(scope, &enumeration.name));
    for value in &enumeration.value {
        out.symbols.push(qualify(scope, &value.name));
    }
}

fn declare_message(message: &MessageProto, scope: &str, out: &mut Declarations) {
    let name = qualify(scope, &message.name);
    for field in &message.field {
        out.symbols.push(qualify(&name, &field.name));
    }
    for oneof in &message.oneof_decl {
        out.symbols.push(qualify(&name, &oneof.name));
    }
    for nested in &message.nested_type {
        declare_message(nested, &name, out);
    }
    for enumeration in &message.enum_type {
        declare_enum(enumeration, &name, out);
    }
    for extension in &message.extension {
        declare_extension(extension, &name, out);
    }
    out.messages.push(name.clone());
    out.symbols.push(name);
}

fn declarations(file: &FileProto) -> Declarations {
    let mut out = Declarations::default();
    let scope = file.package.as_str();
    for message in &file.message_type {
        declare_message(message, scope, &mut out);
    }
    for enumeration in &file.enum_type {
        declare_enum(enumeration, scope, &mut out);
    }
    for extension in &file.extension {
        declare_extension(extension, scope, &mut out);
    }
    for service in &file.service {
        let name = qualify(scope, &service.name);
        for method in &service.method {
            out.symbols.push(qualify(&name, &method.name));
        }
        out.services.push(name.clone());
        out.symbols.push(name);
    }
    out
}

impl DescriptorIndex {
    /// Indexes the files of `descriptor_set` (an encoded FileDescriptorSet
    /// holding every file it mentions, as `protoc --include_imports` writes
    /// it) that define one of `served` services, and the files they import.
    pub fn new<'a>(
        descriptor_set: Bytes,
        served: impl IntoIterator<Item = &'a str>,
    ) -> Result<DescriptorIndex, String> {
        let set = FileDescriptorSet::decode(descriptor_set)
            .map_err(|e| format!("the descriptor set does not decode: {e}"))?;
        let mut parsed = Vec::with_capacity(set.file.len());
        for encoded in set.file {
            let file = FileProto::decode(encoded.clone())
                .map_err(|e| format!("a file descriptor does not decode: {e}"))?;
            parsed.push((file, encoded));
        }
        let position: HashMap<&str, usize> = parsed
            .iter()
            .enumerate()
            .map(|(i, (file, _))| (file.name.as_str(), i))
            .collect();
        let declared: Vec<Declarations> =
            parsed.iter().map(|(file, _)| declarations(file)).collect();

        // Roots: the files of the served services; then what they import.
        let served: BTreeSet<&str> = served.into_iter().collect();
        let mut exposed = BTreeSet::new();
        let mut pending: Vec<usize> = (0..parsed.len())
            .filter(|&i| {
                declared[i]
                    .services
                    .iter()
                    .any(|s| served.contains(s.as_str()))
            })
            .collect();
        while let Some(i) = pending.pop() {
            if !exposed.insert(i) {
                continue;
            }
            for dependency in &parsed[i].0.dependency {
                let j = *position.get(dependency.as_str()).ok_or_else(|| {
                    format!(
                        "{} imports {dependency}, which the set does not hold",
                        parsed[i].0.name
                    )
                })?;
                pending.push(j);
            }
        }

        // Renumber the exposed files densely and index them.
        let renumber: HashMap<usize, usize> = exposed
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, new))
            .collect();
        let mut index = DescriptorIndex {
            files: Vec::with_capacity(exposed.len()),
            by_name: HashMap::new(),
            symbols: HashMap::new(),
            extensions: HashMap::new(),
            services: Vec::new(),
        };
        for &old in &exposed {
            let (file, encoded) = &parsed[old];
            let new = renumber[&old];
            let declarations = &declared[old];
            index.by_name.insert(file.name.clone(), new);
            for symbol in &declarations.symbols {
                index.symbols.insert(symbol.clone(), new);
            }
            for message in &declarations.messages {
                index.extensions.entry(message.clone()).or_default();
            }
            index.services.extend(
                declarations
                    .services
                    .iter()
                    .filter(|s| served.contains(s.as_str()))
                    .cloned(),
            );
            index.files.push(FileEntry {
                name: file.name.clone(),
                encoded: encoded.clone(),
                dependencies: file
                    .dependency
                    .iter()
                    .map(|d| renumber[&position[d.as_str()]])
                    .collect(),
            });
        }
        for &old in &exposed {
            for (extendee, number) in &declared[old].extensions {
                index
                    .extensions
                    .entry(extendee.clone())
                    .or_default()
                    .insert(*number, renumber[&old]);
            }
        }
        index.services.sort();
        Ok(index)
    }

    /// The names of the exposed services, sorted.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The names of the exposed files.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|file| file.name.as_str())
    }

    /// The file and every file it depends on, transitively: the file itself
    /// first, each file once.
    fn with_dependencies(&self, file: usize) -> FileDescriptorResponse {
        let mut order = vec![file];
        let mut seen = BTreeSet::from([file]);
        let mut next = 0;
        while let Some(&current) = order.get(next) {
            next += 1;
            for &dependency in &self.files[current].dependencies {
                if seen.insert(dependency) {
                    order.push(dependency);
                }
            }
        }
        FileDescriptorResponse {
            file_descriptor_proto: order
                .into_iter()
                .map(|i| self.files[i].encoded.clone())
                .collect(),
        }
    }

    /// The answer to one question.
    pub fn answer(&self, request: ServerReflectionRequest) -> ServerReflectionResponse {
        let not_found = |what: String| {
            MessageResponse::ErrorResponse(ErrorResponse {
                error_code: Code::NotFound as i32,
                error_message: what,
            })
        };
        let response = match &request.message_request {
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => match self.by_name.get(name) {
                Some(&file) => {
                    MessageResponse::FileDescriptorResponse(self.with_dependencies(file))
                }
                None => not_found(format!("file {name:?} not found")),
            },
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                let symbol = symbol.strip_prefix('.').unwrap_or(symbol);
                match self.symbols.get(symbol) {
                    Some(&file) => {
                        MessageResponse::FileDescriptorResponse(self.with_dependencies(file))
                    }
                    None => not_found(format!("symbol {symbol:?} not found")),
                }
            }
            Some(MessageRequest::FileContainingExtension(extension)) => {
                let extendee = extension.containing_type.trim_start_matches('.');
                match self
                    .extensions
                    .get(extendee)
                    .and_then(|numbers| numbers.get(&extension.extension_number))
                {
                    Some(&file) => {
                        MessageResponse::FileDescriptorResponse(self.with_dependencies(file))
                    }
                    None => not_found(format!(
                        "no extension {} of {extendee:?}",
                        extension.extension_number
                    )),
                }
            }
            Some(MessageRequest::AllExtensionNumbersOfType(type_name)) => {
                let type_name = type_name.trim_start_matches('.');
                match self.extensions.get(type_name) {
                    Some(numbers) => {
                        MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                            base_type_name: type_name.to_owned(),
                            extension_number: numbers.keys().copied().collect(),
                        })
                    }
                    None => not_found(format!("message type {type_name:?} not found")),
                }
            }
            None => MessageResponse::ErrorResponse(ErrorResponse {
                error_code: Code::InvalidArgument as i32,
                error_message: "the request asks nothing (message_request is not set)".into(),
            }),
        };
        ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(response),
        }
    }
}

/// Serves reflection (v1 and v1alpha) on `router`, describing the services
/// registered on it so far (and itself): register it last.
pub fn register(router: &mut Router, descriptor_set: Bytes) -> Result<(), String> {
    let mut served: Vec<&str> = router.services().collect();
    served.extend([V1_SERVICE, V1ALPHA_SERVICE]);
    let index = Arc::new(DescriptorIndex::new(descriptor_set, served)?);
    for method in [V1_METHOD, V1ALPHA_METHOD] {
        let index = index.clone();
        router.bidi(
            method,
            move |request: Request<Streaming<ServerReflectionRequest>>,
                  mut sink: ResponseSink<ServerReflectionResponse>| {
                let index = index.clone();
                async move {
                    let mut questions = request.into_message();
                    while let Some(question) = questions.message().await? {
                        sink.send(&index.answer(question)).await?;
                    }
                    Ok(Metadata::new())
                }
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::reflection::ExtensionRequest;

    const API: [&str; 4] = [
        "codereview.v1.CodeReviewService",
        "grpc.health.v1.Health",
        V1_SERVICE,
        V1ALPHA_SERVICE,
    ];

    fn index() -> DescriptorIndex {
        DescriptorIndex::new(Bytes::from_static(crate::pb::DESCRIPTOR_SET), API).unwrap()
    }

    fn ask(index: &DescriptorIndex, question: MessageRequest) -> MessageResponse {
        let request = ServerReflectionRequest {
            host: "h".into(),
            message_request: Some(question.clone()),
        };
        let response = index.answer(request);
        assert_eq!(response.valid_host, "h");
        assert_eq!(
            response.original_request.unwrap().message_request,
            Some(question)
        );
        response.message_response.unwrap()
    }

    fn files(response: MessageResponse) -> Vec<String> {
        match response {
            MessageResponse::FileDescriptorResponse(files) => files
                .file_descriptor_proto
                .into_iter()
                .map(|encoded| FileProto::decode(encoded).unwrap().name)
                .collect(),
            other => panic!("not files: {other:?}"),
        }
    }

    fn error_code(response: MessageResponse) -> i32 {
        match response {
            MessageResponse::ErrorResponse(error) => error.error_code,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn lists_the_served_services_only() {
        let index = index();
        let MessageResponse::ListServicesResponse(list) =
            ask(&index, MessageRequest::ListServices(String::new()))
        else {
            panic!("not a list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        let mut expected: Vec<String> = API.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(names, expected);
        // The interop test service is in the set but not served here.
        assert!(
            !index
                .file_names()
                .any(|name| name.starts_with("grpc/testing/"))
        );
        assert_eq!(
            error_code(ask(
                &index,
                MessageRequest::FileByFilename("grpc/testing/test.proto".into())
            )),
            Code::NotFound as i32
        );
    }

    #[test]
    fn resolves_every_kind_of_symbol() {
        let index = index();
        for symbol in [
            "codereview.v1.CodeReviewService",
            "codereview.v1.CodeReviewService.GetSnapshot",
            ".codereview.v1.SessionMessage",
            "codereview.v1.SessionMessage.payload",
            "codereview.v1.SessionMessage.client_sequence",
            "codereview.v1.CodeEdit.Op",
            "codereview.v1.CodeEdit.REPLACE",
            "codereview.v1.Role",
            "codereview.v1.AUTHOR",
            "codereview.v1.PresenceUpdate.Status",
            "codereview.v1.Notice.Kind",
        ] {
            assert_eq!(
                files(ask(
                    &index,
                    MessageRequest::FileContainingSymbol(symbol.into())
                )),
                ["codereview/v1/codereview.proto"],
                "{symbol}"
            );
        }
        assert_eq!(
            files(ask(
                &index,
                MessageRequest::FileContainingSymbol(
                    "grpc.health.v1.HealthCheckResponse.ServingStatus".into()
                )
            )),
            ["grpc/health/v1/health.proto"]
        );
        for missing in [
            "codereview.v1.Nope",
            "codereview.v1",
            "",
            "grpc.testing.TestService",
        ] {
            assert_eq!(
                error_code(ask(
                    &index,
                    MessageRequest::FileContainingSymbol(missing.into())
                )),
                Code::NotFound as i32,
                "{missing}"
            );
        }
    }

    #[test]
    fn files_come_with_their_dependencies() {
        // A set whose served file imports others: the interop service.
        let index = DescriptorIndex::new(
            Bytes::from_static(crate::pb::DESCRIPTOR_SET),
            ["grpc.testing.TestService"],
        )
        .unwrap();
        let mut got = files(ask(
            &index,
            MessageRequest::FileContainingSymbol("grpc.testing.TestService.UnaryCall".into()),
        ));
        assert_eq!(got[0], "grpc/testing/test.proto");
        got.sort();
        assert_eq!(
            got,
            [
                "grpc/testing/empty.proto",
                "grpc/testing/messages.proto",
                "grpc/testing/test.proto"
            ]
        );
        assert_eq!(
            files(ask(
                &index,
                MessageRequest::FileByFilename("grpc/testing/empty.proto".into())
            )),
            ["grpc/testing/empty.proto"]
        );
        assert!(
            !index
                .file_names()
                .any(|name| name.starts_with("codereview/"))
        );
    }

    #[test]
    fn files_are_the_exact_bytes_of_the_set() {
        let index = index();
        let set = FileDescriptorSet::decode(Bytes::from_static(crate::pb::DESCRIPTOR_SET)).unwrap();
        let MessageResponse::FileDescriptorResponse(response) = ask(
            &index,
            MessageRequest::FileByFilename("codereview/v1/codereview.proto".into()),
        ) else {
            panic!("not files");
        };
        assert!(set.file.contains(&response.file_descriptor_proto[0]));
    }

    #[test]
    fn extensions_are_known_per_message_type() {
        let index = index();
        let MessageResponse::AllExtensionNumbersResponse(numbers) = ask(
            &index,
            MessageRequest::AllExtensionNumbersOfType("codereview.v1.SessionMessage".into()),
        ) else {
            panic!("not extension numbers");
        };
        assert_eq!(numbers.base_type_name, "codereview.v1.SessionMessage");
        assert!(numbers.extension_number.is_empty());
        assert_eq!(
            error_code(ask(
                &index,
                MessageRequest::AllExtensionNumbersOfType("codereview.v1.Nope".into())
            )),
            Code::NotFound as i32
        );
        assert_eq!(
            error_code(ask(
                &index,
                MessageRequest::FileContainingExtension(ExtensionRequest {
                    containing_type: "codereview.v1.SessionMessage".into(),
                    extension_number: 100,
                })
            )),
            Code::NotFound as i32
        );
    }

    #[test]
    fn an_empty_question_is_invalid() {
        let response = index().answer(ServerReflectionRequest::default());
        assert_eq!(
            error_code(response.message_response.unwrap()),
            Code::InvalidArgument as i32
        );
    }

    #[test]
    fn a_set_with_extensions_is_indexed() {
        // A hand-made file: package p, message M, an extension of M (field
        // 100) declared at file level and one (101) inside message N.
        let extension = |name: &str, number| FieldProto {
            name: name.into(),
            extendee: ".p.M".into(),
            number,
        };
        let file = FileProto {
            name: "p.proto".into(),
            package: "p".into(),
            message_type: vec![
                MessageProto {
                    name: "M".into(),
                    ..MessageProto::default()
                },
                MessageProto {
                    name: "N".into(),
                    extension: vec![extension("inner", 101)],
                    ..MessageProto::default()
                },
            ],
            extension: vec![extension("outer", 100)],
            service: vec![ServiceProto {
                name: "S".into(),
                method: vec![],
            }],
            ..FileProto::default()
        };
        let set = FileDescriptorSet {
            file: vec![file.encode_to_vec().into()],
        };
        let index = DescriptorIndex::new(set.encode_to_vec().into(), ["p.S"]).unwrap();
        let MessageResponse::AllExtensionNumbersResponse(numbers) = ask(
            &index,
            MessageRequest::AllExtensionNumbersOfType("p.M".into()),
        ) else {
            panic!("not extension numbers");
        };
        assert_eq!(numbers.extension_number, [100, 101]);
        for number in [100, 101] {
            assert_eq!(
                files(ask(
                    &index,
                    MessageRequest::FileContainingExtension(ExtensionRequest {
                        containing_type: "p.M".into(),
                        extension_number: number,
                    })
                )),
                ["p.proto"]
            );
        }
        for symbol in ["p.outer", "p.N.inner"] {
            assert_eq!(
                files(ask(
                    &index,
                    MessageRequest::FileContainingSymbol(symbol.into())
                )),
                ["p.proto"]
            );
        }
    }
}
