"""/docs works offline (Swagger UI from the installed package) and the OpenAPI schema
describes every route with its response model."""

from fastapi.testclient import TestClient

from deepfeed.serve.app import ServeSettings, create_app
from tests.serve.conftest import empty_registry_db, registry, user_salt  # noqa: F401 (fixtures)


def _client(home, registry):  # noqa: F811
    settings = ServeSettings(tracking_uri=registry.uri, runtime="torch", poll_seconds=0, home=home)
    return TestClient(create_app(settings))


def test_docs_page_and_its_assets_come_from_this_server(deepfeed_env, registry):  # noqa: F811
    with _client(deepfeed_env, registry) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
            assert asset in page.text
            served = client.get(asset)
            assert served.status_code == 200 and len(served.content) > 100_000
        assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN


def test_openapi_has_descriptions_and_response_models(deepfeed_env, registry):  # noqa: F811
    with _client(deepfeed_env, registry) as client:
        schema = client.get("/openapi.json").json()
    assert schema["info"]["description"]
    routes = {
        ("/generate", "post"): "GenerateResponse",
        ("/feedback", "post"): "FeedbackResponse",
        ("/health", "get"): "HealthResponse",
        ("/admin/reload", "post"): "ReloadResponse",
    }
    for (path, method), model in routes.items():
        operation = schema["paths"][path][method]
        assert operation["summary"] and operation["description"], path
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith(f"/{model}"), path
        fields = schema["components"]["schemas"][model]["properties"]
        assert all(f.get("description") for f in fields.values()), model
    assert "403" in schema["paths"]["/feedback"]["post"]["responses"]
    assert "503" in schema["paths"]["/generate"]["post"]["responses"]
