"""tickets: tickets, replies, history, calendars, SLA policies, channels, follow-up tasks, rules, saved views

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 04:00:18.864758
"""
from alembic import op
import sqlalchemy as sa
import shopdesk.core.db
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

OPEN_TICKET = "status_group IN ('new', 'open', 'pending') AND merged_into_id IS NULL"


def upgrade() -> None:
    op.create_table('call_log',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=True),
    sa.Column('call_id', sa.String(length=128), nullable=False),
    sa.Column('caller', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('agent_id', sa.String(length=32), nullable=True),
    sa.Column('customer_id', sa.String(length=32), nullable=True),
    sa.Column('ticket_id', sa.String(length=32), nullable=True),
    sa.Column('recording_url', sa.String(length=1000), nullable=True),
    sa.Column('ringing_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('answered_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ended_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_call_log')),
    sa.UniqueConstraint('merchant_id', 'call_id', name=op.f('uq_call_log_merchant_id_call_id'))
    )
    with op.batch_alter_table('call_log', schema=None) as batch_op:
        batch_op.create_index('ix_call_log_customer', ['customer_id'], unique=False)
        batch_op.create_index('ix_call_log_caller', ['merchant_id', 'caller', 'created_at'], unique=False)

    op.create_table('inbound_email',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('mailbox_id', sa.String(length=32), nullable=True),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('from_address', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.String(length=500), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('ticket_id', sa.String(length=32), nullable=True),
    sa.Column('reply_id', sa.String(length=32), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('received_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_email')),
    sa.UniqueConstraint('merchant_id', 'message_id', name=op.f('uq_inbound_email_merchant_id_message_id'))
    )
    with op.batch_alter_table('inbound_email', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbound_email_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('wechat_message',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('dedupe_key', sa.String(length=255), nullable=False),
    sa.Column('openid', sa.String(length=64), nullable=False),
    sa.Column('msg_type', sa.String(length=16), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.String(length=32), nullable=True),
    sa.Column('ticket_id', sa.String(length=32), nullable=True),
    sa.Column('received_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wechat_message')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_wechat_message_dedupe_key'))
    )
    with op.batch_alter_table('wechat_message', schema=None) as batch_op:
        batch_op.create_index('ix_wechat_message_openid', ['merchant_id', 'openid'], unique=False)

    op.create_table('business_calendar',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('settings', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('updated_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_business_calendar_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_business_calendar')),
    sa.UniqueConstraint('merchant_id', 'name', name=op.f('uq_business_calendar_merchant_id_name'))
    )
    op.create_table('inbox_view',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=True),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('filters', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('sort', sa.String(length=32), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_inbox_view_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox_view')),
    sa.UniqueConstraint('merchant_id', 'owner_id', 'name', name=op.f('uq_inbox_view_merchant_id_owner_id_name'))
    )
    with op.batch_alter_table('inbox_view', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbox_view_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('mailbox',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=True),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('display_name', sa.String(length=100), nullable=False),
    sa.Column('imap_host', sa.String(length=255), nullable=True),
    sa.Column('imap_port', sa.Integer(), nullable=False),
    sa.Column('imap_ssl', sa.Boolean(), nullable=False),
    sa.Column('imap_user', sa.String(length=255), nullable=True),
    sa.Column('imap_password', sa.String(length=255), nullable=True),
    sa.Column('imap_folder', sa.String(length=100), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=True),
    sa.Column('last_uid', sa.BigInteger(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('last_polled_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_mailbox_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mailbox')),
    sa.UniqueConstraint('address', name=op.f('uq_mailbox_address'))
    )
    with op.batch_alter_table('mailbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mailbox_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('sla_policy',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('calendar', sa.String(length=64), nullable=True),
    sa.Column('match', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('first_response_minutes', sa.Integer(), nullable=True),
    sa.Column('next_response_minutes', sa.Integer(), nullable=True),
    sa.Column('resolution_minutes', sa.Integer(), nullable=True),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_sla_policy_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sla_policy')),
    sa.UniqueConstraint('merchant_id', 'name', name=op.f('uq_sla_policy_merchant_id_name'))
    )
    op.create_table('ticket_rule',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('conditions', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('actions', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_ticket_rule_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_rule')),
    sa.UniqueConstraint('merchant_id', 'name', name=op.f('uq_ticket_rule_merchant_id_name'))
    )
    with op.batch_alter_table('ticket_rule', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_rule_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('wechat_account',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('app_id', sa.String(length=64), nullable=False),
    sa.Column('app_secret', sa.String(length=128), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('original_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_wechat_account_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wechat_account')),
    sa.UniqueConstraint('store_id', name=op.f('uq_wechat_account_store_id'))
    )
    with op.batch_alter_table('wechat_account', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wechat_account_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('ticket',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.Column('priority', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('status_group', sa.String(length=8), nullable=False),
    sa.Column('customer_id', sa.String(length=32), nullable=True),
    sa.Column('requester_email', sa.String(length=255), nullable=True),
    sa.Column('requester_name', sa.String(length=100), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=True),
    sa.Column('order_id', sa.String(length=32), nullable=True),
    sa.Column('aftersales_id', sa.String(length=32), nullable=True),
    sa.Column('conversation_id', sa.String(length=32), nullable=True),
    sa.Column('assignee_id', sa.String(length=32), nullable=True),
    sa.Column('team', sa.String(length=64), nullable=False),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('custom_fields', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('watchers', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('urge_count', sa.Integer(), nullable=False),
    sa.Column('merged_into_id', sa.String(length=32), nullable=True),
    sa.Column('parent_id', sa.String(length=32), nullable=True),
    sa.Column('sla_policy', sa.String(length=64), nullable=True),
    sa.Column('first_response_due_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_response_due_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolution_due_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sla_check_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sla_emitted', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('sla_breaches', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('first_response_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_public_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('applied_rules', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('survey_token', sa.String(length=64), nullable=True),
    sa.Column('rating_score', sa.Integer(), nullable=True),
    sa.Column('rating_comment', sa.Text(), nullable=False),
    sa.Column('rated_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status_changed_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('solved_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('closed_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], name=op.f('fk_ticket_customer_id_customer')),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_ticket_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket')),
    sa.UniqueConstraint('merchant_id', 'number', name=op.f('uq_ticket_merchant_id_number'))
    )
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index('ix_ticket_merchant_assignee', ['merchant_id', 'assignee_id', 'status_group', 'updated_at'], unique=False)
        batch_op.create_index('ix_ticket_open_updated', ['merchant_id', 'updated_at', 'id'], unique=False,
                              postgresql_where=sa.text(OPEN_TICKET), sqlite_where=sa.text(OPEN_TICKET))
        batch_op.create_index('ix_ticket_open_assignee', ['merchant_id', 'assignee_id', 'updated_at', 'id'],
                              unique=False, postgresql_where=sa.text(OPEN_TICKET), sqlite_where=sa.text(OPEN_TICKET))
        batch_op.create_index('ix_ticket_open_counts', ['merchant_id', 'status_group', 'assignee_id', 'urge_count'],
                              unique=False, postgresql_where=sa.text(OPEN_TICKET), sqlite_where=sa.text(OPEN_TICKET))
        batch_op.create_index('ix_ticket_merchant_group_updated', ['merchant_id', 'status_group', 'updated_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ticket_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index('ix_ticket_sla_check', ['sla_check_at'], unique=False)

    op.create_table('ticket_event',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('ticket_id', sa.String(length=32), nullable=False),
    sa.Column('at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor_type', sa.String(length=16), nullable=False),
    sa.Column('actor_id', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id'], name=op.f('fk_ticket_event_ticket_id_ticket')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_event'))
    )
    with op.batch_alter_table('ticket_event', schema=None) as batch_op:
        batch_op.create_index('ix_ticket_event_ticket_at', ['ticket_id', 'at'], unique=False)

    op.create_table('ticket_reply',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('ticket_id', sa.String(length=32), nullable=False),
    sa.Column('author_type', sa.String(length=8), nullable=False),
    sa.Column('author_id', sa.String(length=64), nullable=True),
    sa.Column('author_name', sa.String(length=100), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('public', sa.Boolean(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('attachment_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('origin_ticket_id', sa.String(length=32), nullable=True),
    sa.Column('message_id', sa.String(length=255), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id'], name=op.f('fk_ticket_reply_ticket_id_ticket')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_reply'))
    )
    with op.batch_alter_table('ticket_reply', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_reply_message_id'), ['message_id'], unique=False)
        batch_op.create_index('ix_ticket_reply_ticket_at', ['ticket_id', 'created_at'], unique=False)

    op.create_table('ticket_task',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('ticket_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('assignee_id', sa.String(length=32), nullable=True),
    sa.Column('due_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.Column('done_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id'], name=op.f('fk_ticket_task_ticket_id_ticket')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_task'))
    )
    with op.batch_alter_table('ticket_task', schema=None) as batch_op:
        batch_op.create_index('ix_ticket_task_due', ['merchant_id', 'status', 'due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ticket_task_ticket_id'), ['ticket_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ticket_task', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ticket_task_ticket_id'))
        batch_op.drop_index('ix_ticket_task_due')

    op.drop_table('ticket_task')
    with op.batch_alter_table('ticket_reply', schema=None) as batch_op:
        batch_op.drop_index('ix_ticket_reply_ticket_at')
        batch_op.drop_index(batch_op.f('ix_ticket_reply_message_id'))

    op.drop_table('ticket_reply')
    with op.batch_alter_table('ticket_event', schema=None) as batch_op:
        batch_op.drop_index('ix_ticket_event_ticket_at')

    op.drop_table('ticket_event')
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.drop_index('ix_ticket_open_counts')
        batch_op.drop_index('ix_ticket_open_updated')
        batch_op.drop_index('ix_ticket_open_assignee')
        batch_op.drop_index('ix_ticket_sla_check')
        batch_op.drop_index(batch_op.f('ix_ticket_parent_id'))
        batch_op.drop_index('ix_ticket_merchant_group_updated')
        batch_op.drop_index('ix_ticket_merchant_assignee')
        batch_op.drop_index(batch_op.f('ix_ticket_customer_id'))

    op.drop_table('ticket')
    with op.batch_alter_table('wechat_account', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wechat_account_merchant_id'))

    op.drop_table('wechat_account')
    with op.batch_alter_table('ticket_rule', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ticket_rule_merchant_id'))

    op.drop_table('ticket_rule')
    op.drop_table('sla_policy')
    with op.batch_alter_table('mailbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mailbox_merchant_id'))

    op.drop_table('mailbox')
    with op.batch_alter_table('inbox_view', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbox_view_merchant_id'))

    op.drop_table('inbox_view')
    op.drop_table('business_calendar')
    with op.batch_alter_table('wechat_message', schema=None) as batch_op:
        batch_op.drop_index('ix_wechat_message_openid')

    op.drop_table('wechat_message')
    with op.batch_alter_table('inbound_email', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_email_ticket_id'))

    op.drop_table('inbound_email')
    with op.batch_alter_table('call_log', schema=None) as batch_op:
        batch_op.drop_index('ix_call_log_caller')
        batch_op.drop_index('ix_call_log_customer')

    op.drop_table('call_log')
