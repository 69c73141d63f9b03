"""chat console: cards, notes, participants, blocks, canned replies, internal rooms, visitor info

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 22:51:00.777654
"""
from alembic import op
import sqlalchemy as sa
import shopdesk.core.db
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chat_block',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('value', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_block')),
    sa.UniqueConstraint('merchant_id', 'kind', 'value', name=op.f('uq_chat_block_merchant_id_kind_value'))
    )
    with op.batch_alter_table('chat_block', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_block_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('chat_canned_reply',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=True),
    sa.Column('shortcut', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_canned_reply'))
    )
    with op.batch_alter_table('chat_canned_reply', schema=None) as batch_op:
        batch_op.create_index('ix_chat_canned_reply_owner', ['merchant_id', 'owner_id'], unique=False)

    op.create_table('chat_room',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=80), nullable=False),
    sa.Column('member_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=False),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_room')),
    sa.UniqueConstraint('merchant_id', 'key', name=op.f('uq_chat_room_merchant_id_key'))
    )
    with op.batch_alter_table('chat_room', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_room_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('chat_room_message',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('room_id', sa.String(length=32), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('client_msg_id', sa.String(length=64), nullable=True),
    sa.Column('sender_id', sa.String(length=32), nullable=False),
    sa.Column('sender_name', sa.String(length=200), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['room_id'], ['chat_room.id'], name=op.f('fk_chat_room_message_room_id_chat_room')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_room_message')),
    sa.UniqueConstraint('room_id', 'sender_id', 'client_msg_id', name=op.f('uq_chat_room_message_room_id_sender_id_client_msg_id')),
    sa.UniqueConstraint('room_id', 'seq', name=op.f('uq_chat_room_message_room_id_seq'))
    )
    with op.batch_alter_table('chat_room_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_room_message_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('chat_participant',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('merchant_id', sa.String(length=32), nullable=False),
    sa.Column('conversation_id', sa.String(length=32), nullable=False),
    sa.Column('staff_id', sa.String(length=32), nullable=False),
    sa.Column('invited_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['chat_conversation.id'], name=op.f('fk_chat_participant_conversation_id_chat_conversation')),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], name=op.f('fk_chat_participant_staff_id_staff')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_participant')),
    sa.UniqueConstraint('conversation_id', 'staff_id', name=op.f('uq_chat_participant_conversation_id_staff_id'))
    )
    with op.batch_alter_table('chat_participant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_participant_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_chat_participant_merchant_id'), ['merchant_id'], unique=False)

    with op.batch_alter_table('chat_agent_presence', schema=None) as batch_op:
        batch_op.add_column(sa.Column('socket_seen_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('chat_conversation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locked_by', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('import_key', sa.String(length=100), nullable=True))
        batch_op.create_index('ix_chat_conversation_import', ['merchant_id', 'import_key'], unique=False)

    with op.batch_alter_table('chat_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('card', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('private', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('mentions', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True))

    with op.batch_alter_table('chat_visitor', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ip', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('location', sa.String(length=100), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('user_agent', sa.String(length=500), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('device', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('referrer', sa.String(length=2000), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('landing_page', sa.String(length=2000), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('connected_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('left_at', shopdesk.core.db.UTCDateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('chat_visitor', schema=None) as batch_op:
        batch_op.drop_column('left_at')
        batch_op.drop_column('connected_at')
        batch_op.drop_column('landing_page')
        batch_op.drop_column('referrer')
        batch_op.drop_column('device')
        batch_op.drop_column('user_agent')
        batch_op.drop_column('location')
        batch_op.drop_column('ip')

    with op.batch_alter_table('chat_message', schema=None) as batch_op:
        batch_op.drop_column('mentions')
        batch_op.drop_column('private')
        batch_op.drop_column('card')

    with op.batch_alter_table('chat_conversation', schema=None) as batch_op:
        batch_op.drop_index('ix_chat_conversation_import')
        batch_op.drop_column('import_key')
        batch_op.drop_column('locked_by')

    with op.batch_alter_table('chat_agent_presence', schema=None) as batch_op:
        batch_op.drop_column('socket_seen_at')

    with op.batch_alter_table('chat_participant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_participant_merchant_id'))
        batch_op.drop_index(batch_op.f('ix_chat_participant_conversation_id'))

    op.drop_table('chat_participant')
    with op.batch_alter_table('chat_room_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_room_message_merchant_id'))

    op.drop_table('chat_room_message')
    with op.batch_alter_table('chat_room', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_room_merchant_id'))

    op.drop_table('chat_room')
    with op.batch_alter_table('chat_canned_reply', schema=None) as batch_op:
        batch_op.drop_index('ix_chat_canned_reply_owner')

    op.drop_table('chat_canned_reply')
    with op.batch_alter_table('chat_block', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_block_merchant_id'))

    op.drop_table('chat_block')
