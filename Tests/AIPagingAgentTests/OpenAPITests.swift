import AIPagingAgent
import AIPagingCore
import Foundation
import Testing

/// The OpenAPI document in openapi/ must describe exactly what ControlAPI serves.
@Suite struct OpenAPITests {
    func spec() throws -> JSON {
        let path = #filePath.replacingOccurrences(of: "Tests/AIPagingAgentTests/OpenAPITests.swift", with: "openapi/aipaging.openapi.json")
        return try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
    }

    @Test func routesMatchTheImplementation() throws {
        let paths = try #require(try spec()["paths"]?.objectValue)
        var documented = Set<String>()
        for (path, item) in paths.pairs {
            for method in ["get", "put", "delete", "post", "patch"] where item[method] != nil {
                documented.insert("\(method.uppercased()) \(path)")
            }
        }
        let implemented = Set(ControlAPI.routes.map { "\($0.method) \($0.path)" })
        #expect(documented == implemented)
    }

    @Test func causesMatchTheImplementation() throws {
        let causes = try #require(try spec()["components"]?["schemas"]?["Cause"]?["enum"]?.arrayValue)
        #expect(Set(causes.compactMap(\.stringValue)) == Set(RejectCause.allCases.map(\.rawValue)))
    }

    @Test func everyErrorStatusOfACauseIsDocumentedOnPut() throws {
        let responses = try #require(try spec()["paths"]?["/v1/leases/{lease_id}"]?["put"]?["responses"]?.objectValue)
        let leaseCauses: [RejectCause] = RejectCause.allCases.filter {
            ![.leaseNotFound, .notFound, .methodNotAllowed, .shuttingDown, .badRequest].contains($0)
        }
        for c in leaseCauses where c.status != 503 || responses["503"] != nil {
            #expect(responses[String(c.status)] != nil, "status \(c.status) of \(c.rawValue) not documented on PUT")
        }
    }

    @Test func lifecycleEventKindsAreDocumented() throws {
        let kinds = try #require(try spec()["components"]?["schemas"]?["LifecycleEvent"]?["properties"]?["event"]?["enum"]?.arrayValue)
        #expect(Set(kinds.compactMap(\.stringValue)) == Set(LifecycleEvent.Kind.allCases.map(\.rawValue)))
    }
}
