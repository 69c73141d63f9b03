"""chat: the resend key leads with the sender, so one lookup serves a whole batch of messages

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 02:00:00
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chat_message', schema=None) as batch_op:
        batch_op.drop_constraint('uq_chat_message_conversation_id_sender_id_client_msg_id', type_='unique')
        batch_op.create_unique_constraint(op.f('uq_chat_message_sender_id_client_msg_id_conversation_id'),
                                          ['sender_id', 'client_msg_id', 'conversation_id'])


def downgrade() -> None:
    with op.batch_alter_table('chat_message', schema=None) as batch_op:
        batch_op.drop_constraint('uq_chat_message_sender_id_client_msg_id_conversation_id', type_='unique')
        batch_op.create_unique_constraint(op.f('uq_chat_message_conversation_id_sender_id_client_msg_id'),
                                          ['conversation_id', 'sender_id', 'client_msg_id'])
