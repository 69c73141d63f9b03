"""live chat: visitors, desks, agent presence, conversations, messages, attachments

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 22:27:31
"""
from alembic import op
import sqlalchemy as sa
import shopdesk.core.db
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chat_attachment',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('owner_type', sa.String(length=8), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=False),
    sa.Column('conversation_id', sa.String(length=32), nullable=True),
    sa.Column('content_type', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=255), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_attachment'))
    )
    with op.batch_alter_table('chat_attachment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_attachment_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_chat_attachment_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('chat_agent_presence',
    sa.Column('staff_id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('last_assigned_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_chat_agent_presence_merchant_id_merchant')),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], name=op.f('fk_chat_agent_presence_staff_id_staff')),
    sa.PrimaryKeyConstraint('staff_id', name=op.f('pk_chat_agent_presence'))
    )
    with op.batch_alter_table('chat_agent_presence', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_agent_presence_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('chat_desk',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=True),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('agent_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('business_hours', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True),
    sa.Column('fallthrough', sa.Boolean(), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_chat_desk_merchant_id_merchant')),
    sa.ForeignKeyConstraint(['store_id'], ['store.id'], name=op.f('fk_chat_desk_store_id_store')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_desk'))
    )
    with op.batch_alter_table('chat_desk', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_desk_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('chat_visitor',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('customer_id', sa.String(length=32), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('phone', sa.String(length=32), nullable=False),
    sa.Column('pages', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('visit_count', sa.Integer(), nullable=False),
    sa.Column('last_agent_id', sa.String(length=32), nullable=True),
    sa.Column('last_agent_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], name=op.f('fk_chat_visitor_customer_id_customer')),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_chat_visitor_merchant_id_merchant')),
    sa.ForeignKeyConstraint(['store_id'], ['store.id'], name=op.f('fk_chat_visitor_store_id_store')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_visitor'))
    )
    with op.batch_alter_table('chat_visitor', schema=None) as batch_op:
        batch_op.create_index('ix_chat_visitor_customer', ['customer_id', 'store_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_chat_visitor_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('chat_conversation',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('visitor_id', sa.String(length=32), nullable=False),
    sa.Column('customer_id', sa.String(length=32), nullable=True),
    sa.Column('desk_id', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('assignee_id', sa.String(length=32), nullable=True),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('visitor_read_seq', sa.Integer(), nullable=False),
    sa.Column('agent_read_seq', sa.Integer(), nullable=False),
    sa.Column('waiting_since', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('queued_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('assigned_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('first_reply_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_message_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ended_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ended_by', sa.String(length=16), nullable=True),
    sa.Column('handle_s', sa.Integer(), nullable=True),
    sa.Column('rating_score', sa.Integer(), nullable=True),
    sa.Column('rating_comment', sa.Text(), nullable=True),
    sa.Column('rated_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['assignee_id'], ['staff.id'], name=op.f('fk_chat_conversation_assignee_id_staff')),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], name=op.f('fk_chat_conversation_customer_id_customer')),
    sa.ForeignKeyConstraint(['desk_id'], ['chat_desk.id'], name=op.f('fk_chat_conversation_desk_id_chat_desk')),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_chat_conversation_merchant_id_merchant')),
    sa.ForeignKeyConstraint(['store_id'], ['store.id'], name=op.f('fk_chat_conversation_store_id_store')),
    sa.ForeignKeyConstraint(['visitor_id'], ['chat_visitor.id'], name=op.f('fk_chat_conversation_visitor_id_chat_visitor')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_conversation'))
    )
    with op.batch_alter_table('chat_conversation', schema=None) as batch_op:
        batch_op.create_index('ix_chat_conversation_assignee', ['assignee_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_chat_conversation_merchant_id'), ['merchant_id'], unique=False)
        batch_op.create_index('ix_chat_conversation_queue', ['merchant_id', 'status', 'queued_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_chat_conversation_visitor_id'), ['visitor_id'], unique=False)
        batch_op.create_index('uq_chat_conversation_open', ['visitor_id'], unique=True, sqlite_where=sa.text("status <> 'ended'"), postgresql_where=sa.text("status <> 'ended'"))

    op.create_table('chat_message',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('conversation_id', sa.String(length=32), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('client_msg_id', sa.String(length=64), nullable=True),
    sa.Column('sender_type', sa.String(length=8), nullable=False),
    sa.Column('sender_id', sa.String(length=32), nullable=True),
    sa.Column('sender_name', sa.String(length=200), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('attachment', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True),
    sa.Column('via', sa.String(length=8), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['chat_conversation.id'], name=op.f('fk_chat_message_conversation_id_chat_conversation')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_message')),
    sa.UniqueConstraint('conversation_id', 'sender_id', 'client_msg_id', name=op.f('uq_chat_message_conversation_id_sender_id_client_msg_id')),
    sa.UniqueConstraint('conversation_id', 'seq', name=op.f('uq_chat_message_conversation_id_seq'))
    )
    with op.batch_alter_table('chat_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_message_merchant_id'), ['merchant_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('chat_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_message_merchant_id'))

    op.drop_table('chat_message')
    with op.batch_alter_table('chat_conversation', schema=None) as batch_op:
        batch_op.drop_index('uq_chat_conversation_open', sqlite_where=sa.text("status <> 'ended'"), postgresql_where=sa.text("status <> 'ended'"))
        batch_op.drop_index(batch_op.f('ix_chat_conversation_visitor_id'))
        batch_op.drop_index('ix_chat_conversation_queue')
        batch_op.drop_index(batch_op.f('ix_chat_conversation_merchant_id'))
        batch_op.drop_index('ix_chat_conversation_assignee')

    op.drop_table('chat_conversation')
    with op.batch_alter_table('chat_visitor', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_visitor_merchant_id'))
        batch_op.drop_index('ix_chat_visitor_customer')

    op.drop_table('chat_visitor')
    with op.batch_alter_table('chat_desk', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_desk_merchant_id'))

    op.drop_table('chat_desk')
    with op.batch_alter_table('chat_agent_presence', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_agent_presence_merchant_id'))

    op.drop_table('chat_agent_presence')
    with op.batch_alter_table('chat_attachment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_attachment_merchant_id'))
        batch_op.drop_index(batch_op.f('ix_chat_attachment_conversation_id'))

    op.drop_table('chat_attachment')
