"""
Tests for L{edd_gateway.routes.loader}: the routes file, the ConfigMap
manifest around it, the extensions, and every validation with its file:line.
"""

from __future__ import annotations

import os
from textwrap import dedent

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes.loader import (
    RouteProblem,
    RoutesFileError,
    load_default_routes,
    load_routes_file,
    load_routes_text,
    parse_duration,
)
from edd_gateway.routes.model import Hsts, MatchKind, ResponseHeaders, Route, Target

ORIGINALS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "original")


def routesFile(body: str) -> str:
    return "routes:\n" + dedent(body)


class ProblemsMixin:
    def problems(self, text: str, filename: str = "routes.yaml") -> list[str]:
        error = self.assertRaises(RoutesFileError, load_routes_text, text, filename)  # type: ignore[attr-defined]
        return [str(problem) for problem in error.errors]

    def assertOneProblem(self, text: str, expected: str) -> None:
        self.assertEqual(self.problems(text), [expected])  # type: ignore[attr-defined]


class OriginalFilesTests(SynchronousTestCase):
    """The Go gateway's own files load unchanged."""

    def test_routesFile(self) -> None:
        routes = load_routes_file(os.path.join(ORIGINALS, "routes.yaml"))
        self.assertEqual(len(routes), 20)
        self.assertEqual(routes[0], Route(
            host="cloud-api.eddisonso.com", path="/",
            target=Target("simple-file-share-backend", 80), source="routes.yaml:3"))
        self.assertEqual(routes[1].path, "/compute")
        self.assertEqual(routes[1].source, "routes.yaml:9")
        self.assertTrue(all(route.match is MatchKind.PREFIX and not route.strip_prefix for route in routes))

    def test_configMapManifest(self) -> None:
        """
        The ConfigMap is accepted as is, and sources name lines of the
        manifest itself.
        """
        routes = load_routes_file(os.path.join(ORIGINALS, "gateway-routes.configmap.yaml"))
        self.assertEqual(len(routes), 28)
        self.assertEqual(routes[0].source, "gateway-routes.configmap.yaml:10")
        self.assertEqual(routes[-1].host, "registry.cloud.eddisonso.com")
        self.assertEqual(routes[-1].target, Target("edd-registry", 80))
        self.assertEqual(routes[-1].source, "gateway-routes.configmap.yaml:161")

    def test_originalsAreDuplicateFree(self) -> None:
        for name in ("routes.yaml", "gateway-routes.configmap.yaml"):
            routes = load_routes_file(os.path.join(ORIGINALS, name))
            keys = {(route.host, route.path, route.match) for route in routes}
            self.assertEqual(len(keys), len(routes))

    def test_defaultRoutes(self) -> None:
        routes = load_default_routes()
        self.assertEqual([(route.host, route.path, str(route.target)) for route in routes],
                         [("localhost", "/", "internal:welcome"), ("127.0.0.1", "/", "internal:welcome")])


class ExtensionTests(SynchronousTestCase):
    """The keys this gateway adds to the original format."""

    def test_allKeys(self) -> None:
        [route] = load_routes_text(routesFile("""\
            - host: Example.COM.
              path: /api/
              target: "[2001:db8::1]:8443"
              match: exact
              strip_prefix: yes
              connect_timeout: 500ms
              response_timeout: 2m
              redirect_https: true
        """), "conf/routes.yaml")
        self.assertEqual(route, Route(
            host="example.com", path="/api/", target=Target("2001:db8::1", 8443),
            match=MatchKind.EXACT, strip_prefix=True, connect_timeout=0.5,
            response_timeout=120.0, redirect_https=True, source="routes.yaml:2"))

    def test_defaultsApplyWhereRoutesSayNothing(self) -> None:
        routes = load_routes_text(dedent("""\
            defaults:
              connect_timeout: 3
              response_timeout: 30s
            routes:
              - {host: a.com, path: /, target: "a:80"}
              - {host: b.com, path: /, target: "b:80", response_timeout: 1.5}
        """), "r.yaml")
        self.assertEqual([(r.connect_timeout, r.response_timeout) for r in routes], [(3.0, 30.0), (3.0, 1.5)])

    def test_tlsPassthrough(self) -> None:
        routes = load_routes_text(routesFile("""\
            - {host: vm.example.com, path: /, target: "10.0.0.5:443", tls: passthrough}
            - {host: www.example.com, path: /, target: "web:80", tls: terminate}
        """), "r.yaml")
        self.assertEqual([route.tls_passthrough for route in routes], [True, False])

    def test_internalWelcome(self) -> None:
        [route] = load_routes_text(routesFile("- {host: localhost, path: /, target: 'internal:welcome'}\n"), "r")
        self.assertEqual(route.target, Target("", 0, internal="welcome"))
        self.assertEqual(str(route.target), "internal:welcome")

    def test_emptyRoutes(self) -> None:
        self.assertEqual(load_routes_text("routes: []\n", "r.yaml"), [])
        self.assertEqual(load_routes_text("routes:\n", "r.yaml"), [])

    def test_pathsNormalised(self) -> None:
        routes = load_routes_text(routesFile("""\
            - {host: a.com, path: /compute/, target: "a:80"}
            - {host: a.com, path: "/x/%7euser/../y", target: "a:80"}
            - {host: a.com, path: /, target: "a:80"}
            - {host: a.com, path: /exact/, target: "a:80", match: exact}
        """), "r.yaml")
        self.assertEqual([route.path for route in routes], ["/compute", "/x/y", "/", "/exact/"])

    def test_durations(self) -> None:
        self.assertEqual([parse_duration(v) for v in (30, 0.25, "30", "30s", "500ms", "2m", "1h", " .5s ")],
                         [30.0, 0.25, 30.0, 30.0, 0.5, 120.0, 3600.0, 0.5])
        for bad in (0, -1, True, float("inf"), float("nan"), "0s", "fast", "30 sec", "", None, [1]):
            self.assertRaises(ValueError, parse_duration, bad)


class ValidationTests(ProblemsMixin, SynchronousTestCase):
    """Each problem is reported with the file and the line it is on."""

    def test_problemFormat(self) -> None:
        problem = RouteProblem("a/routes.yaml", 7, "bad thing")
        self.assertEqual(str(problem), "a/routes.yaml:7: bad thing")
        error = RoutesFileError([problem, RouteProblem("r", 9, "other")])
        self.assertEqual(str(error), "a/routes.yaml:7: bad thing\nr:9: other")

    def test_notAMapping(self) -> None:
        self.assertOneProblem("- a\n- b\n", "routes.yaml:1: expected a mapping with a 'routes' list, got a list")

    def test_missingRoutes(self) -> None:
        self.assertOneProblem("defaults: {}\n", "routes.yaml:1: missing 'routes' (a list of routes)")

    def test_emptyFile(self) -> None:
        self.assertEqual(self.problems("# nothing\n"),
                         ["routes.yaml:1: the file is empty: expected a mapping with a 'routes' list"])

    def test_unknownTopLevelKey(self) -> None:
        self.assertOneProblem("routes: []\nroute: []\n",
                              "routes.yaml:2: unknown top-level key 'route' (allowed: routes, defaults)")

    def test_routesNotAList(self) -> None:
        self.assertOneProblem("routes: {host: a}\n", "routes.yaml:1: 'routes' must be a list, got a mapping")

    def test_routeNotAMapping(self) -> None:
        self.assertOneProblem(routesFile("- just a string\n"),
                              "routes.yaml:2: each route must be a mapping with host, path and target,"
                              " got 'just a string'")

    def test_unknownKeyNamedWithAllowed(self) -> None:
        [problem] = self.problems(routesFile("""\
            - host: a.com
              path: /
              target: a:80
              strip-prefix: true
        """))
        self.assertTrue(problem.startswith("routes.yaml:5: unknown route key 'strip-prefix' (allowed: host, path,"))
        self.assertIn("strip_prefix", problem)

    def test_missingKeys(self) -> None:
        self.assertOneProblem(routesFile("- host: a.com\n"), "routes.yaml:2: route is missing path, target")

    def test_keyGivenTwice(self) -> None:
        self.assertOneProblem(routesFile("- {host: a.com, path: /, target: 'a:80', path: /b}\n"),
                              "routes.yaml:2: key 'path' given twice (first on line 2)")

    def test_badHosts(self) -> None:
        cases = {
            "a.com:8080": "host 'a.com:8080' must not include a port",
            "'[::1]:80'": "host '[::1]:80' must not include a port",
            "https://a.com": "host 'https://a.com' must be a bare name: remove the scheme",
            "'*.a.com'": "host '*.a.com': wildcards are not supported",
            "a_b.com": "host 'a_b.com' is not a valid DNS name or IP address",
            "-a.com": "host '-a.com' is not a valid DNS name or IP address",
            "": "host must not be empty",
            "[a, b]": "host must be a string, got a list",
        }
        for value, reason in cases.items():
            self.assertOneProblem(routesFile(f"- host: {value}\n  path: /\n  target: a:80\n"),
                                  f"routes.yaml:2: {reason}")

    def test_goodHosts(self) -> None:
        routes = load_routes_text(routesFile("""\
            - {host: "::1", path: /, target: "a:80"}
            - {host: "[2001:DB8::2]", path: /, target: "a:80"}
            - {host: 192.168.3.200, path: /, target: "a:80"}
            - {host: "x.", path: /, target: "a:80"}
        """), "r")
        self.assertEqual([r.host for r in routes], ["::1", "2001:db8::2", "192.168.3.200", "x"])

    def test_badPaths(self) -> None:
        cases = {
            "compute": "path 'compute' must start with '/'",
            "'/a b'": "path '/a b' must not contain spaces or control characters",
            "/a?x=1": "path '/a?x=1' must not contain a query ('?')",
            "'/a#top'": "path '/a#top' must not contain a fragment ('#')",
            "/a%zz": "path '/a%zz': invalid percent-escape in the path",
        }
        for value, reason in cases.items():
            self.assertOneProblem(routesFile(f"- host: a.com\n  path: {value}\n  target: a:80\n"),
                                  f"routes.yaml:3: {reason}")

    def test_badTargets(self) -> None:
        cases = {
            "http://a:80": "target 'http://a:80' must be host:port without a scheme",
            "backend": "target 'backend' must be host:port (IPv6 as [address]:port)",
            "'::1:80'": "target '::1:80' must be host:port (IPv6 as [address]:port)",
            "a:0": "target 'a:0': port must be a number from 1 to 65535",
            "a:65536": "target 'a:65536': port must be a number from 1 to 65535",
            "a:http": "target 'a:http': port must be a number from 1 to 65535",
            "a_b:80": "target 'a_b:80': 'a_b' is not a valid DNS name or IP address",
            "'10:80'": "target '10:80': '10' is not a valid DNS name or IP address",
            "internal:nope": "unknown internal target 'internal:nope' (known: internal:welcome)",
        }
        for value, reason in cases.items():
            self.assertOneProblem(routesFile(f"- host: a.com\n  path: /\n  target: {value}\n"),
                                  f"routes.yaml:4: {reason}")

    def test_unquotedSexagesimalLookingTargetReadAsText(self) -> None:
        """YAML 1.1 reads 10:80 as the integer 680; a target is its text."""
        self.assertEqual(self.problems(routesFile("- {host: a.com, path: /, target: 10:80}\n")),
                         ["routes.yaml:2: target '10:80': '10' is not a valid DNS name or IP address"])

    def test_badValues(self) -> None:
        cases = {
            "strip_prefix: maybe": "strip_prefix must be true or false, got 'maybe'",
            "strip_prefix: 'true'": "strip_prefix must be true or false, got 'true'",
            "redirect_https: 1": "redirect_https must be true or false, got '1'",
            "match: regex": "match must be one of prefix, exact",
            "tls: yes": "tls must be one of terminate, passthrough",
            "connect_timeout: 0": "connect_timeout: must be more than 0 seconds, got 0",
            "response_timeout: soon": "response_timeout: 'soon' is not a duration like 30, 30s, 500ms, 2m or 1h",
        }
        for line, reason in cases.items():
            self.assertOneProblem(routesFile(f"- host: a.com\n  path: /\n  target: a:80\n  {line}\n"),
                                  f"routes.yaml:5: {reason}")

    def test_passthroughNeedsWholeHost(self) -> None:
        self.assertOneProblem(
            routesFile("- {host: a.com, path: /x, target: 'a:443', tls: passthrough}\n"),
            "routes.yaml:2: tls: passthrough applies to a whole host: its route must be the prefix path /")
        self.assertOneProblem(
            routesFile("- {host: a.com, path: /, target: 'internal:welcome', tls: passthrough}\n"),
            "routes.yaml:2: tls: passthrough needs a host:port target, not an internal one")

    def test_duplicates(self) -> None:
        """Same host, same normalised path, same match kind: a duplicate."""
        problems = self.problems(routesFile("""\
            - {host: a.com, path: /compute, target: "a:80"}
            - {host: A.com, path: /compute/, target: "b:80"}
            - {host: a.com, path: /compute, target: "c:80", match: exact}
            - {host: b.com, path: /compute, target: "c:80"}
        """), "conf/routes.yaml")
        self.assertEqual(problems, ["conf/routes.yaml:3: duplicate of route at conf/routes.yaml:2"
                                    " (host a.com, prefix path /compute)"])

    def test_allProblemsReportedInLineOrder(self) -> None:
        problems = self.problems(routesFile("""\
            - host: a.com:80
              path: nope
              target: a:80
            - 7
            - host: b.com
              path: /
              target: b
              color: blue
        """))
        self.assertEqual([problem.split(": ")[0] for problem in problems],
                         ["routes.yaml:2", "routes.yaml:3", "routes.yaml:5", "routes.yaml:8", "routes.yaml:9"])

    def test_yamlSyntaxError(self) -> None:
        [problem] = self.problems("routes:\n  - host: a\n   path: /\n")
        self.assertTrue(problem.startswith("routes.yaml:3: YAML syntax error: "), problem)

    def test_severalDocuments(self) -> None:
        self.assertOneProblem("routes: []\n---\nroutes: []\n",
                              "routes.yaml:3: expected one YAML document (a routes mapping or one ConfigMap)")


class ConfigMapTests(ProblemsMixin, SynchronousTestCase):
    """A ConfigMap manifest is unwrapped; lines are those of the manifest."""

    manifest = dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: gateway-routes
        data:
          routes.yaml: |
            routes:
              - host: a.com
                path: /
                target: a:80
              - host: b.com
                path: nope
                target: b:80
        """)

    def test_problemLinesAreManifestLines(self) -> None:
        self.assertOneProblem(self.manifest, "routes.yaml:12: path 'nope' must start with '/'")

    def test_sourcesAreManifestLines(self) -> None:
        routes = load_routes_text(self.manifest.replace("nope", "/b"), "deploy/cm.yaml")
        self.assertEqual([route.source for route in routes], ["cm.yaml:8", "cm.yaml:11"])

    def test_yamlErrorInsideBlock(self) -> None:
        [problem] = self.problems(self.manifest.replace("    path: nope", "   path: nope"))
        self.assertTrue(problem.startswith("routes.yaml:12: YAML syntax error"), problem)

    def test_missingRoutesKey(self) -> None:
        self.assertOneProblem(self.manifest.replace("routes.yaml: |", "other.yaml: |"),
                              "routes.yaml:6: ConfigMap data has no 'routes.yaml' text (keys: other.yaml)")

    def test_missingData(self) -> None:
        self.assertOneProblem("kind: ConfigMap\nmetadata: {name: x}\n",
                              "routes.yaml:1: ConfigMap has no 'data' mapping holding 'routes.yaml'")

    def test_amongOtherDocuments(self) -> None:
        text = "kind: Namespace\nmetadata: {name: core}\n---\n" + self.manifest.replace("nope", "/b")
        self.assertEqual(len(load_routes_text(text, "all.yaml")), 2)


class FileTests(SynchronousTestCase):
    """L{load_routes_file} reads from disk."""

    def test_sourceIsBaseName(self) -> None:
        os.mkdir(directory := self.mktemp())
        path = os.path.join(directory, "mine.yaml")
        with open(path, "w") as file:
            file.write(routesFile("- {host: a.com, path: /, target: 'a:80'}\n"))
        self.assertEqual(load_routes_file(path)[0].source, "mine.yaml:2")

    def test_unreadable(self) -> None:
        path = self.mktemp()
        error = self.assertRaises(RoutesFileError, load_routes_file, path)
        [problem] = error.errors
        self.assertEqual((problem.filename, problem.line), (path, 0))
        self.assertIn("cannot read", problem.reason)

    def test_notUtf8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as file:
            file.write(b"routes:\n  - host: \xff\n")
        error = self.assertRaises(RoutesFileError, load_routes_file, path)
        self.assertEqual(str(error), f"{path}:2: not valid UTF-8")


class RobustnessTests(SynchronousTestCase):
    """Whatever the text, the loader answers with routes or problems."""

    with open(os.path.join(ORIGINALS, "routes.yaml")) as _file:
        original = _file.read()

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=3000), st.integers(min_value=0, max_value=40),
           st.text(alphabet=" \n\t-:[]{}&*!|>'\"%@`#,?/.x0", max_size=8))
    def test_mutatedOriginalNeverCrashes(self, start: int, length: int, insert: str) -> None:
        text = self.original[:start] + insert + self.original[start + length:]
        try:
            routes = load_routes_text(text, "routes.yaml")
        except RoutesFileError as error:
            self.assertTrue(error.errors)
            for problem in error.errors:
                self.assertTrue(0 <= problem.line <= text.count("\n") + 2, problem)
        else:
            self.assertTrue(all(route.source.startswith("routes.yaml:") for route in routes))


class ResponseHeadersKeyTests(ProblemsMixin, SynchronousTestCase):
    """C{response_headers} and C{hsts} (issue 14 item 7)."""

    def test_loaded(self) -> None:
        [route] = load_routes_text(routesFile("""\
            - host: a.com
              path: /
              target: web:80
              response_headers:
                set:
                  X-Frame-Options: DENY
                  X-Count: 10
                  X-Empty: ""
                remove: [Server, X-Powered-By]
              hsts: {max_age: 31536000, include_subdomains: true}
            """), "routes.yaml")
        self.assertEqual(route.response_headers, ResponseHeaders(
            set=(("X-Frame-Options", "DENY"), ("X-Count", "10"), ("X-Empty", "")),
            remove=("Server", "X-Powered-By")))
        self.assertEqual(route.hsts, Hsts(31536000, True))
        self.assertEqual(route.own_answer_headers("https"),
                         (("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),))
        self.assertEqual(route.own_answer_headers("http"), ())
        plain, tls = route.edits_for("http"), route.edits_for("https")
        assert plain is not None and tls is not None
        self.assertNotIn(b"Strict-Transport-Security: max-age=31536000; includeSubDomains", plain.add)
        self.assertIn(b"Strict-Transport-Security: max-age=31536000; includeSubDomains", tls.add)
        self.assertIn(b"server", plain.drop)

    def test_defaults(self) -> None:
        [route] = load_routes_text(routesFile("""\
            - host: a.com
              path: /
              target: web:80
              response_headers: {}
              hsts: {max_age: 0}
            """), "routes.yaml")
        self.assertIsNone(route.response_headers)
        self.assertEqual(route.hsts, Hsts(0, False))
        self.assertEqual(route.own_answer_headers("https"), (("Strict-Transport-Security", "max-age=0"),))

    def test_absent_changes_nothing(self) -> None:
        [route] = load_routes_text(routesFile("""\
            - host: a.com
              path: /
              target: web:80
            """), "routes.yaml")
        self.assertIsNone(route.edits_for("https"))
        self.assertEqual(route.own_answer_headers("https"), ())

    def test_problems_name_their_lines(self) -> None:
        self.assertEqual(self.problems(routesFile("""\
            - host: a.com
              path: /
              target: web:80
              response_headers:
                set:
                  Content-Length: "5"
                  "X Bad": a
                  X-Lead: " a"
                  Strict-Transport-Security: max-age=1
                  X-Null:
                remove: [x-lead, Transfer-Encoding]
                add: {}
              hsts: {max_age: -5, preload: true}
            - host: b.com
              path: /
              target: web:443
              tls: passthrough
              hsts: {max_age: 60}
            - host: c.com
              path: /
              target: web:80
              hsts: 60
              response_headers: [Server]
            - host: d.com
              path: /
              target: web:80
              hsts: {include_subdomains: true}
              response_headers: {remove: Server}
            """)), [
            "routes.yaml:7: header 'Content-Length' is the gateway's own (framing, hop-by-hop or the request id): "
            "it cannot be set or removed",
            "routes.yaml:8: header name 'X Bad' is not a token (letters, digits and !#$%&'*+-.^_`|~)",
            "routes.yaml:9: header value ' a' must be visible ASCII, with spaces or tabs only inside "
            "(no control characters, line breaks or leading/trailing spaces)",
            "routes.yaml:10: Strict-Transport-Security is set with the route's hsts key, "
            "which sends it over terminated TLS only",
            "routes.yaml:11: the value of header X-Null must not be empty",
            "routes.yaml:12: header 'x-lead' given twice in response_headers (first on line 9)",
            "routes.yaml:12: header 'Transfer-Encoding' is the gateway's own (framing, hop-by-hop or the request "
            "id): it cannot be set or removed",
            "routes.yaml:13: unknown response_headers key 'add' (allowed: set, remove)",
            "routes.yaml:14: unknown hsts key 'preload' (allowed: max_age, include_subdomains)",
            "routes.yaml:14: hsts max_age must be a whole number of seconds, 0 or more, got '-5'",
            "routes.yaml:19: hsts needs tls: terminate (with passthrough the backend's TLS answers are not the "
            "gateway's to change; set HSTS on the backend)",
            "routes.yaml:23: hsts must be a mapping with max_age (seconds) and optionally include_subdomains, "
            "got '60'",
            "routes.yaml:24: response_headers must be a mapping with set and/or remove, got a list",
            "routes.yaml:28: hsts is missing max_age (seconds; 0 tells browsers to forget the policy)",
            "routes.yaml:29: response_headers remove must be a list of header names, got 'Server'",
        ])
