package catalogfs;

import java.util.Locale;
import java.util.Set;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.plans.logical.Command;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.SubqueryAlias;
import org.apache.spark.sql.execution.command.SetCommand;
import org.apache.spark.sql.execution.datasources.HadoopFsRelation;
import org.apache.spark.sql.execution.datasources.LogicalRelation;
import org.apache.spark.sql.execution.datasources.v2.DataSourceV2Relation;

import scala.Function1;
import scala.Option;
import scala.Tuple2;
import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

/**
 * The guard of {@code catalogfs serve}'s JDBC endpoint (a {@code spark.sql.extensions} class).
 *
 * <p>A check rule: it runs in CheckAnalysis, on the calling thread, for every statement (eagerly run
 * commands included), and acts only on HiveServer2's threads ({@code HiveServer2-Background-Pool: …},
 * {@code HiveServer2-Handler-Pool: …}; clients cannot rename them). A JDBC client needs no credentials,
 * so there it always refuses what reaches beyond the catalogue:
 * <ul>
 *   <li>{@code SELECT TRANSFORM(…) USING 'cmd'} (runs a shell command on the server);</li>
 *   <li>{@code reflect}, {@code java_method}, {@code try_reflect} ({@code reflect('java.lang.System',
 *       'exit', 0)} stops the server);</li>
 *   <li>files read by path ({@code SELECT * FROM text.`/etc/passwd`}, {@code delta.`/path`}): only
 *       tables of the catalogue;</li>
 *   <li>{@code SET spark.sql.catalog…=…} (would load a catalog plugin of the client's choosing).</li>
 * </ul>
 * With {@code spark.catalogfs.jdbc.readOnly=true} (catalogfs's {@code server.jdbc_read_only}) it also
 * refuses every statement whose analysed plan is a {@link Command} ({@code CREATE}, {@code INSERT},
 * {@code DROP}, {@code MERGE}, {@code CACHE}, {@code ADD JAR}, {@code CREATE FUNCTION} …) except those
 * that only describe ({@code SHOW …}, {@code DESCRIBE …}, {@code EXPLAIN …}) or set the JDBC
 * session's own state ({@code SET}, {@code RESET}, {@code USE}).
 *
 * <p>Spark Connect runs statements on its own threads: its clients (who hold the token) are trusted
 * and unaffected, except a session whose client asked to be read-only
 * ({@code spark.catalogfs.session.readOnly=true}, set by {@code catalogfs sql}): there every statement
 * that would change something is refused, as on a read-only JDBC endpoint. Thread names and class names are details of Spark 4.2: re-check on upgrades
 * (tests/test_serve.py tries each refusal over JDBC).
 */
public final class JdbcGuardExtension extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {

    static final String READ_ONLY_KEY = "spark.catalogfs.jdbc.readOnly";
    static final String SESSION_READ_ONLY_KEY = "spark.catalogfs.session.readOnly";
    static final String SESSION_REFUSAL = "catalogfs: this session is read-only; refused ";
    static final String HIVE_SERVER_THREADS = "HiveServer2-";
    static final String[] DESCRIBING = {"Show", "Describe", "Explain"};
    static final Set<String> SESSION_STATE = Set.of(
        "SetCommand", "ResetCommand", "SetCatalogAndNamespace", "SetNamespaceCommand", "SetCatalogCommand");
    static final Set<String> REFLECTION = Set.of("CallMethodViaReflection", "TryReflect");
    static final Set<String> EXTERNAL_PROCESS = Set.of("ScriptTransformation");

    @Override
    public BoxedUnit apply(SparkSessionExtensions extensions) {
        extensions.injectCheckRule(new AbstractFunction1<SparkSession, Function1<LogicalPlan, BoxedUnit>>() {
            @Override
            public Function1<LogicalPlan, BoxedUnit> apply(SparkSession session) {
                return new Guard(session, session.sparkContext().getConf().getBoolean(READ_ONLY_KEY, true));
            }
        });
        return BoxedUnit.UNIT;
    }

    /**
     * True for the relations Delta builds itself while it reads a table of the catalogue (its log,
     * checkpoints, the files of a snapshot): their file index is one of Delta's classes. They are
     * analysed on the caller's thread, so without this the first JDBC read of a table would be
     * refused. A path typed by a client gets Spark's own index (or, for {@code delta.`path`}, a V2
     * relation named by its path, refused below).
     */
    static boolean deltaInternal(LogicalRelation relation) {
        return relation.relation() instanceof HadoopFsRelation
            && ((HadoopFsRelation) relation.relation()).location().getClass().getName()
                .startsWith("org.apache.spark.sql.delta.");
    }

    /** A table of the catalogue is never named with a slash or a colon; a path always is. */
    static boolean namedByPath(String name) {
        return name.contains("/") || name.contains(":");
    }

    /** Why {@code node} (one node of a plan) reaches beyond the catalogue, or null. */
    static String beyondTheCatalogue(LogicalPlan node) {
        String name = node.getClass().getSimpleName();
        if (EXTERNAL_PROCESS.contains(name)) {
            return "TRANSFORM … USING (an external process)";
        }
        if (node instanceof LogicalRelation && ((LogicalRelation) node).catalogTable().isEmpty()
                && !deltaInternal((LogicalRelation) node)) {
            return "files read by path (only tables of the catalogue)";
        }
        if (node instanceof SubqueryAlias && namedByPath(((SubqueryAlias) node).identifier().name())) {
            return "files read by path (only tables of the catalogue)";  // delta.`/path`, read by Delta as V1
        }
        if (node instanceof DataSourceV2Relation) {
            Option<?> identifier = ((DataSourceV2Relation) node).identifier();
            if (identifier.isEmpty() || namedByPath(identifier.get().toString())) {
                return "files read by path (only tables of the catalogue)";
            }
        }
        if (node instanceof SetCommand) {
            Option<Tuple2<String, Option<String>>> kv = ((SetCommand) node).kv();
            if (kv.isDefined() && kv.get()._2().isDefined()
                    && kv.get()._1().trim().toLowerCase(Locale.ROOT).startsWith("spark.sql.catalog")) {
                return "SET spark.sql.catalog… (catalog plugins)";
            }
        }
        scala.collection.Iterator<Expression> expressions = node.expressions().iterator();
        while (expressions.hasNext()) {
            boolean reflects = expressions.next().exists(new AbstractFunction1<Expression, Object>() {
                @Override
                public Object apply(Expression expression) {
                    return REFLECTION.contains(expression.getClass().getSimpleName());
                }
            });
            if (reflects) {
                return "reflect / java_method / try_reflect";
            }
        }
        return null;
    }

    /**
     * The first node of {@code plan} (children first, not inside a describing command) that is a
     * {@link Command} changing something, or null. {@code WITH … INSERT} has its command below the
     * root. With {@code sessionStateAllowed}, {@code SET}, {@code RESET} and {@code USE} pass.
     */
    static LogicalPlan writingCommand(LogicalPlan plan, boolean sessionStateAllowed) {
        String name = plan.getClass().getSimpleName();
        for (String prefix : DESCRIBING) {
            if (name.startsWith(prefix)) {
                return null;
            }
        }
        if (plan instanceof Command && !(sessionStateAllowed && SESSION_STATE.contains(name))) {
            return plan;
        }
        scala.collection.Iterator<LogicalPlan> children = plan.children().iterator();
        while (children.hasNext()) {
            LogicalPlan found = writingCommand(children.next(), sessionStateAllowed);
            if (found != null) {
                return found;
            }
        }
        return null;
    }

    static final class Guard extends AbstractFunction1<LogicalPlan, BoxedUnit> {
        private final SparkSession session;
        private final boolean readOnly;

        Guard(SparkSession session, boolean readOnly) {
            this.session = session;
            this.readOnly = readOnly;
        }

        /**
         * A session whose client set {@code spark.catalogfs.session.readOnly=true} ({@code catalogfs
         * sql} over Spark Connect does) is refused every statement that would change something, on
         * any thread: SELECT, WITH, SHOW, DESCRIBE, EXPLAIN and time travel pass.
         */
        private boolean sessionReadOnly() {
            return "true".equalsIgnoreCase(session.conf().get(SESSION_READ_ONLY_KEY, "false").trim());
        }

        @Override
        public BoxedUnit apply(LogicalPlan plan) {
            if (sessionReadOnly()) {
                LogicalPlan writing = writingCommand(plan, false);
                if (writing != null) {
                    throw new UnsupportedOperationException(SESSION_REFUSAL + writing.nodeName());
                }
            }
            if (!Thread.currentThread().getName().startsWith(HIVE_SERVER_THREADS)) {
                return BoxedUnit.UNIT;
            }
            LogicalPlan writing = readOnly ? writingCommand(plan, true) : null;
            if (writing != null) {
                throw new UnsupportedOperationException("catalogfs: the JDBC endpoint is read-only; refused "
                    + writing.nodeName() + " (write through Spark Connect or a catalogfs job)");
            }
            final String[] reason = {null};
            plan.foreachWithSubqueries(new AbstractFunction1<LogicalPlan, BoxedUnit>() {
                @Override
                public BoxedUnit apply(LogicalPlan node) {
                    if (reason[0] == null) {
                        reason[0] = beyondTheCatalogue(node);
                    }
                    return BoxedUnit.UNIT;
                }
            });
            if (reason[0] != null) {
                throw new UnsupportedOperationException("catalogfs: the JDBC endpoint refuses " + reason[0]);
            }
            return BoxedUnit.UNIT;
        }
    }
}
