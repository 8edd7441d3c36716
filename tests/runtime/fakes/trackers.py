"""Local servers speaking the comment APIs of Jira (REST v3), GitLab (v4), Bitbucket Cloud (2.0) and
Opsgenie (v2 alert notes): each records the request and answers as the platform does."""

from __future__ import annotations

import itertools
from typing import Any

from aiohttp import web

from tests.runtime.fakes.platforms import FakeServer


class FakeTrackers(FakeServer):
    """One loopback server for the four APIs (their paths do not overlap).

    Each call is recorded as (name, fields) with `_path`, `_auth`, `_token` (GitLab's PRIVATE-TOKEN)
    and `_query` added. `author` is the account id the platform says posted a comment.
    """

    def __init__(self, *, status: int = 201) -> None:
        super().__init__()
        self.status = status
        self._ids = itertools.count(10000)
        self.app.router.add_post("/jira/rest/api/3/issue/{key}/comment", self._jira)
        self.app.router.add_post("/ex/jira/{cloud}/rest/api/3/issue/{key}/comment", self._jira)
        self.app.router.add_post("/api/v4/projects/{project}/{kind}/{iid}/notes", self._gitlab)
        self.app.router.add_post("/api/v4/projects/{project}/repository/commits/{sha}/comments", self._gitlab)
        self.app.router.add_post("/2.0/repositories/{ws}/{slug}/{kind}/{id}/comments", self._bitbucket)
        self.app.router.add_post("/v2/alerts/{alert}/notes", self._opsgenie)

    async def _record(self, name: str, request: web.Request) -> dict[str, Any]:
        data = await request.json()
        fields: dict[str, Any] = dict(data) if isinstance(data, dict) else {"_": data}
        fields["_path"] = request.raw_path.split("?")[0]
        fields["_query"] = dict(request.query)
        fields["_auth"] = request.headers.get("Authorization", "")
        fields["_token"] = request.headers.get("PRIVATE-TOKEN", "")
        self.requests.append((name, fields))
        return fields

    async def _jira(self, request: web.Request) -> web.Response:
        await self._record("jira", request)
        if self.status >= 300:
            return web.json_response({"errorMessages": ["nope"]}, status=self.status)
        ident = str(next(self._ids))
        return web.json_response({"id": ident, "author": {"accountId": "bot-account"}}, status=201)

    async def _gitlab(self, request: web.Request) -> web.Response:
        await self._record("gitlab", request)
        if self.status >= 300:
            return web.json_response({"message": "403 Forbidden"}, status=self.status)
        return web.json_response(
            {"id": next(self._ids), "author": {"id": 4242, "username": "aofd-bot"}}, status=201
        )

    async def _bitbucket(self, request: web.Request) -> web.Response:
        await self._record("bitbucket", request)
        if self.status >= 300:
            return web.json_response({"type": "error"}, status=self.status)
        body = {"id": next(self._ids), "user": {"uuid": "{bot-uuid}", "nickname": "aofd-bot"}}
        return web.json_response(body, status=201)

    async def _opsgenie(self, request: web.Request) -> web.Response:
        await self._record("opsgenie", request)
        if self.status >= 300:
            return web.json_response({"message": "Could not authenticate"}, status=self.status)
        return web.json_response({"result": "Request will be processed", "requestId": "r-1"}, status=202)
