"""Who may see and change which server: oslo.policy, with Nova's defaults.

A server is its libvirt domain; its project is the one Nova wrote into the
domain's metadata (``<nova:owner><nova:project uuid=...>``).  As in Nova,
reading a server takes a reader role in its project, snapshotting or
rebuilding it a member role, and an admin may do anything; a domain with no
owner is the admin's alone.  The rules keep Nova's names, so an operator's
policy file reads the same.  ``oslopolicy-sample-generator --namespace
vmsnap`` writes them out (``tox -e genpolicy``).
"""

from typing import Any, List, Optional

from oslo_config import cfg
from oslo_policy import policy

ADMIN = 'role:admin'
PROJECT_READER_OR_ADMIN = (
    '(role:reader and project_id:%(project_id)s) or role:admin')
PROJECT_MEMBER_OR_ADMIN = (
    '(role:member and project_id:%(project_id)s) or role:admin')

SHOW = 'os_compute_api:servers:show'
INDEX = 'os_compute_api:servers:index'
CREATE_IMAGE = 'os_compute_api:servers:create_image'
REBUILD = 'os_compute_api:servers:rebuild'
START = 'os_compute_api:servers:start'
STOP = 'os_compute_api:servers:stop'
PAUSE = 'os_compute_api:os-pause-server:pause'
UNPAUSE = 'os_compute_api:os-pause-server:unpause'

RULES = [
    policy.RuleDefault('context_is_admin', ADMIN,
                       description='Decides what is an admin context.'),
    policy.DocumentedRuleDefault(
        name=SHOW, check_str=PROJECT_READER_OR_ADMIN,
        description='Show a server (a libvirt domain on this host). A '
                    'server that may not be shown is answered 404.',
        operations=[{'method': 'GET', 'path': '/servers/{server_id}'}]),
    policy.DocumentedRuleDefault(
        name=INDEX, check_str=PROJECT_READER_OR_ADMIN,
        description='List servers: each is listed only when this rule '
                    'allows it for that server\'s project.',
        operations=[{'method': 'GET', 'path': '/servers'},
                    {'method': 'GET', 'path': '/servers/detail'}]),
    policy.DocumentedRuleDefault(
        name=CREATE_IMAGE, check_str=PROJECT_MEMBER_OR_ADMIN,
        description='Snapshot a server into a new image.',
        operations=[{'method': 'POST',
                     'path': '/servers/{server_id}/action (createImage)'}]),
    policy.DocumentedRuleDefault(
        name=REBUILD, check_str=PROJECT_MEMBER_OR_ADMIN,
        description='Rebuild a server onto one of its snapshots, which '
                    'reverts it.',
        operations=[{'method': 'POST',
                     'path': '/servers/{server_id}/action (rebuild)'}]),
] + [
    policy.DocumentedRuleDefault(
        name=name, check_str=PROJECT_MEMBER_OR_ADMIN,
        description=description,
        operations=[{'method': 'POST',
                     'path': '/servers/{server_id}/action (%s)' % action}])
    for name, action, description in (
        (START, 'os-start', 'Start a stopped server (a managed-saved one '
                            'resumes).'),
        (STOP, 'os-stop', 'Stop a server: shut it down, then power it off '
                          'after shutdown_timeout.'),
        (PAUSE, 'pause', 'Pause a server.'),
        (UNPAUSE, 'unpause', 'Unpause a paused server.'))
]


def list_rules() -> List[policy.RuleDefault]:
    """For oslopolicy-sample-generator (namespace ``vmsnap``)."""
    return RULES


class Enforcer:
    """The rules, read from ``[oslo_policy] policy_file`` over defaults."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self._enforcer = policy.Enforcer(conf)
        self._enforcer.register_defaults(RULES)

    def allows(self, rule: str, context: Any,
               project_id: Optional[str]) -> bool:
        """Whether ``context`` may do ``rule`` to a server of the project.

        ``project_id`` None (a domain with no owner) never matches a
        project: only the admin rule can allow it.
        """
        target = {'project_id': project_id or '<no owner>'}
        return self._enforcer.enforce(rule, target, context.to_policy_values())
